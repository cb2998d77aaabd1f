//! CPU kernels, one file per op family (the CUDA twins live in `kernels/<same name>.cu`).

pub mod activation;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod linear;
pub mod loss;
pub mod optim;

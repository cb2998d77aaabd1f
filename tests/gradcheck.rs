//! The gradient check passes on every op, model and optimizer, in f64, through every GEMM; and
//! it *fails* when a backward is deliberately wrong.

use ncf_cpu::{CpuBackend, GemmImpl};
use ncf_model::gradcheck::{self, OpCase, Options, check_op, no_fault, op_cases};
use std::process::Command;

#[test]
fn every_tensor_passes_with_max_rel_at_most_1e_6_through_every_gemm() {
    for gemm in [GemmImpl::Naive, GemmImpl::Scratch, GemmImpl::Library] {
        let be = CpuBackend::<f64>::new(gemm);
        let report = gradcheck::run_all(&be, &Options::default(), &no_fault).unwrap();
        let mut lines = Vec::new();
        for s in &report.subjects {
            assert!(!s.tensors.is_empty(), "{} has no tensors", s.name);
            for t in &s.tensors {
                lines.push(format!(
                    "{gemm:?} {}/{}: checked {} kinks {} max_abs {:.2e} max_rel {:.2e}",
                    s.name, t.name, t.checked, t.kinks, t.max_abs, t.max_rel
                ));
                assert!(t.ok && t.max_rel <= 1e-6 && t.checked > 0, "{}", lines.last().unwrap());
            }
        }
        assert!(report.ok);
        let models: Vec<&str> = report.subjects.iter().filter(|s| s.kind == "model").map(|s| s.name.as_str()).collect();
        assert_eq!(
            models,
            ["gmf", "mlp", "neumf", "mf", "rating", "rating+bn+dropout", "rating+features", "neumf+features"]
        );
        let ops: Vec<&str> = report.subjects.iter().filter(|s| s.kind == "op").map(|s| s.name.as_str()).collect();
        for op in ["mse", "dropout (fixed mask)", "batchnorm (train)"] {
            assert!(ops.contains(&op), "no gradcheck of {op}: {ops:?}");
        }
        println!("{}", lines.join("\n"));
    }
}

#[test]
fn a_corrupted_model_gradient_is_caught_and_named() {
    let be = CpuBackend::<f64>::default();
    // A backward that is 0.1% off in one tensor of one model.
    let fault = |model: &str, tensor: &str, g: &mut [f64]| {
        if (model == "neumf" && tensor == "mlp_1_weight")
            || (model == "rating+bn+dropout" && tensor == "mlp_0_bn_gamma")
        {
            g.iter_mut().for_each(|x| *x *= 1.001);
        }
    };
    let report = gradcheck::check_models(&be, &Options::default(), &fault).unwrap();
    let failed: Vec<String> = report
        .iter()
        .flat_map(|s| s.tensors.iter().filter(|t| !t.ok).map(move |t| format!("{}/{}", s.name, t.name)))
        .collect();
    assert_eq!(failed, ["neumf/mlp_1_weight", "rating+bn+dropout/mlp_0_bn_gamma"]);
    let t = report.iter().find(|s| s.name == "neumf").unwrap().tensors.iter().find(|t| !t.ok).unwrap();
    assert!(t.max_rel > 5e-4 && t.max_rel < 2e-3, "max_rel {:.3e}", t.max_rel);
    assert!(!t.first_bad.is_empty(), "evidence is reported");
}

#[test]
fn a_wrong_op_backward_is_caught() {
    let be = CpuBackend::<f64>::default();
    let opts = Options::default();
    // Take the real ReLU case and swap in a backward that forgets the mask (passes dout through).
    let mut cases = op_cases(&be, opts.seed);
    let relu = cases.iter().position(|c| c.name == "relu").unwrap();
    let real = cases.swap_remove(relu);
    let n_nonpositive = real.inputs[0].2.iter().filter(|&&x| x <= 0.0).count();
    // The correct gradient is r·1[x > 0]. Evaluated at all-positive inputs it is r itself.
    let positive: Vec<f64> = real.inputs[0].2.iter().map(|x| x.abs() + 1.0).collect();
    let r = (real.grad)(&[positive]).unwrap().remove(0);
    let wrong = OpCase {
        name: "relu (mask forgotten)",
        inputs: real.inputs.clone(),
        loss: real.loss,
        // The bug: dinp = dout everywhere, as if ReLU were the identity.
        grad: Box::new(move |_| Ok(vec![r.clone()])),
    };
    let r = check_op(&wrong, &opts).unwrap();
    assert!(!r.ok, "the check must fail");
    // Exactly the elements with x ≤ 0 fail, where the numeric gradient is 0 (up to the
    // stencil's rounding, ~1e-14).
    assert!(n_nonpositive > 0);
    assert_eq!(r.tensors[0].failed, n_nonpositive);
    assert!(
        r.tensors[0].first_bad.iter().all(|(_, a, n)| n.abs() < 1e-12 && *a != 0.0),
        "{:?}",
        r.tensors[0].first_bad
    );
}

#[test]
fn cli_gradcheck_exits_zero_and_nonzero_on_an_injected_fault() {
    let bin = env!("CARGO_BIN_EXE_ncf");
    let ok = Command::new(bin).args(["gradcheck", "--json"]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["dtype"], "f64");

    let bad = Command::new(bin).args(["gradcheck", "--inject-fault", "gmf/predict_weight"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let out = String::from_utf8_lossy(&bad.stdout);
    let failing: Vec<&str> = out.lines().filter(|l| l.ends_with("  FAIL")).collect();
    assert_eq!(failing.len(), 1, "{out}");
    assert!(failing[0].contains("gmf") && failing[0].contains("predict_weight"), "{out}");
    assert!(out.contains("element 0: analytic"), "evidence printed: {out}");
    assert!(out.trim_end().ends_with("1 failed; worst max_rel 9.99e-4: FAIL"), "{out}");
}

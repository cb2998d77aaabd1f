//! A checkpoint file, loaded as `ncf eval`, `recommend` and `serve` load one (the model built
//! from it, its id maps and training items), and as `--resume` reads its state.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ncf_train::Checkpoint;
use ncf_train::checkpoint::ResumeState;
use ncf_train::infer::Scorer;

fuzz_target!(|data: &[u8]| {
    let path = ncf_fuzz::put("model.safetensors", data);
    let Ok(ckpt) = Checkpoint::load(&path) else { return };
    let _ = ckpt.train_config(&path);
    let _ = ResumeState::read(&ckpt, &path);
    if let Ok(scorer) = Scorer::from_checkpoint(&ckpt, &path, None) {
        let _ = scorer.recommend(&[0], 3);
        let _ = scorer.score_pairs(&[(0, 0)]);
    }
});

//! `--optimizer als` through the trainer: it learns (beats popularity on the embedded sample,
//! the loss falls), gives the same bits on one and two threads, resumes bit for bit, writes an
//! MF checkpoint that scores like the trained model, and refuses what it cannot train.

use ncf_train::source::{SourceOptions, load};
use ncf_train::{Checkpoint, ModelChoice, OptimChoice, Outcome, Prepared, ResumeFrom, TrainConfig, train};

fn sample() -> Prepared {
    let loaded = load(None, &SourceOptions::default()).unwrap();
    Prepared::from_split(&loaded.split, 42)
}

fn als(epochs: usize) -> TrainConfig {
    TrainConfig { model: ModelChoice::Mf, optimizer: OptimChoice::Als, factors: 8, epochs, ..TrainConfig::default() }
}

fn run(cfg: &TrainConfig, data: &Prepared, threads: usize, resume: Option<ResumeFrom<'_>>) -> Outcome {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| train(cfg, data, resume, |_| {})).unwrap()
}

#[test]
fn als_beats_popularity_on_the_sample_and_its_loss_falls() {
    let data = sample();
    let out = run(&als(6), &data, 2, None);
    let mut counts = vec![0u32; data.known.n_items];
    data.train.items.iter().for_each(|&i| counts[i as usize] += 1);
    let pop = ncf_eval::evaluate_popularity(&counts, &data.test, 10).hr;
    let losses: Vec<f64> = out.epochs.iter().map(|r| r.loss).collect();
    println!("ALS test HR@10 {:.4} (popularity {pop:.4}); losses {losses:?}", out.summary.test_hr);
    assert!(out.summary.test_hr > pop + 0.05, "ALS {:.4} against popularity {pop:.4}", out.summary.test_hr);
    assert!(losses[losses.len() - 1] < losses[0], "the loss did not fall: {losses:?}");
    assert!(out.epochs.iter().all(|r| r.sampling_s == 0.0), "ALS samples nothing");
}

#[test]
fn als_gives_the_same_bits_on_one_and_two_threads() {
    let data = sample();
    let (a, b) = (run(&als(3), &data, 1, None), run(&als(3), &data, 2, None));
    assert_eq!(a.best.tensors, b.best.tensors, "1 and 2 threads differ");
    assert_eq!(a.summary.test_hr, b.summary.test_hr);
}

#[test]
fn als_resumes_bit_for_bit_and_its_checkpoint_scores_like_the_run() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    let whole = run(&als(4), &data, 2, None);
    let path = dir.path().join("als.st");
    let first = TrainConfig { save: Some(path.clone()), ..als(2) };
    run(&first, &data, 2, None);
    let ckpt = Checkpoint::load(&path).unwrap();
    let resumed = run(&als(4), &data, 2, Some(ResumeFrom { checkpoint: &ckpt, path: &path }));
    assert_eq!(resumed.epochs.len(), 4);
    for (a, b) in whole.epochs.iter().zip(&resumed.epochs) {
        assert_eq!((a.loss, a.valid_hr, a.test_hr), (b.loss, b.valid_hr, b.test_hr), "epoch {}", a.epoch);
    }
    assert_eq!(whole.best.tensors, resumed.best.tensors, "resumed weights differ");
    // The saved checkpoint is an ordinary MF model: rebuilt, it scores the test cases as the
    // run did at the selected epoch.
    let be = ncf_cpu::CpuBackend::<f32>::default();
    let final_path = dir.path().join("final.st");
    whole.best.save(&final_path, false).unwrap();
    let mut model = Checkpoint::load(&final_path).unwrap().model(&be, 25_600, &final_path).unwrap();
    let m = ncf_eval::evaluate(&be, &mut model, &data.test, 10).unwrap();
    assert_eq!(m.hr, whole.summary.test_hr, "the checkpoint's test HR@10");
    assert_eq!(whole.best.spec.kind, "mf");
}

#[test]
fn als_refuses_what_it_cannot_train() {
    let data = sample();
    let err = |cfg: TrainConfig| train(&cfg, &data, None, |_| {}).err().map(|e| e.to_string()).unwrap_or_default();
    let e = err(TrainConfig { model: ModelChoice::Gmf, ..als(1) });
    assert!(e.contains("als trains the dot-product model only: add --model mf"), "{e}");
    let e = err(TrainConfig { als_reg: 0.0, ..als(1) });
    assert!(e.contains("als_reg") && e.contains("positive"), "{e}");
    let e = err(TrainConfig { als_alpha: f64::NAN, ..als(1) });
    assert!(e.contains("als_alpha"), "{e}");
    let e = err(TrainConfig { epochs: 0, ..als(1) });
    assert!(e.contains("epochs"), "{e}");
    let e = err(TrainConfig { lr_schedule: ncf_train::LrSchedule::Cosine, ..als(1) });
    assert!(e.contains("lr_schedule") && e.contains("no learning rate"), "{e}");
    let e = err(TrainConfig { step: ncf_train::Step::Reference, ..als(1) });
    assert!(e.contains("--als-cg-steps 0 runs the exact reference solve"), "{e}");
}

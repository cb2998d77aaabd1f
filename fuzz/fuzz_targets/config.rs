//! A `--config run.toml` file, read and layered over the defaults as `ncf train` does.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ncf_train::TrainConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = std::path::Path::new("run.toml");
    if let Ok((file, keys)) = TrainConfig::from_toml_str(text, path) {
        let _ = TrainConfig::layered(&TrainConfig::default(), &[], Some((path, &file, &keys)), None);
    }
});

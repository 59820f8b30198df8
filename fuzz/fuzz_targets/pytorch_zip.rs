//! A torch.save zip archive (data.pkl, byteorder, data/<key> storages), and the
//! sniffing front door that also takes safetensors and the legacy format.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = squeeze::format::pytorch::read_state_dict(data);
});

//! File formats: the `.sqz` container and safetensors.

pub mod safetensors;

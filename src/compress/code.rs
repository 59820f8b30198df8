//! The `code` pass (Deep Compression's last stage): the same model written with
//! Huffman-coded indices and positions; earlier stages are written with fixed-width
//! codes, as the paper's stages are. The model does not change.

use serde::{Deserialize, Serialize};

use super::pass::{Context, ModelKind, Output, PassError, Technique};
use crate::model::Model;

/// `type = "code"`: no settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Code {}

impl Technique for Code {
    fn stage_name(&self) -> String {
        "coded".into()
    }

    fn check(&self, kind: ModelKind) -> Result<(), String> {
        match kind {
            ModelKind::Tasks => Err(super::not_available(kind, &self.stage_name())),
            _ => Ok(()),
        }
    }

    fn apply(&self, _model: &mut Model, _ctx: &mut Context) -> Result<Output, PassError> {
        let mut out = Output::model(&serde_json::Map::new());
        out.entropy_coding = true;
        Ok(out)
    }
}

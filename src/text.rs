//! Text in: a Hugging Face `tokenizer.json` (read by the `tokenizers` crate) turning
//! sentences into the fixed-length token-id rows a Transformer graph takes as input.
//!
//! A graph whose first node is an [`crate::spec::Op::Embedding`] reads `[seq]` token
//! ids stored as f32. Every sentence is truncated to `seq` tokens (the special tokens
//! of the tokenizer's template, e.g. BERT's `[CLS] … [SEP]`, included) and padded on
//! the right with the embedding's `pad_token`, which the executor treats as padding.
//!
//! An imported model carries its tokenizer in the file (metadata key [`TOKENIZER_KEY`],
//! the `tokenizer.json` text deflated and base64-coded), so `squeeze embed` needs only
//! the model file.

use std::io::{Read, Write};

use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Model-file metadata key holding the deflated, base64-coded `tokenizer.json`.
pub const TOKENIZER_KEY: &str = "squeeze.tokenizer";

/// Why text cannot be tokenized.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("tokenizer.json cannot be read by the tokenizers library: {0}")]
    Tokenizer(String),
    #[error("the model file carries no tokenizer (metadata '{TOKENIZER_KEY}'); import the model from a Hugging Face directory with tokenizer.json")]
    NoTokenizer,
    #[error("the stored tokenizer is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot tokenize {text:?}: {why}")]
    Encode { text: String, why: String },
}

/// A tokenizer producing rows of exactly `seq` ids.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    seq: usize,
}

impl TextEncoder {
    /// From `tokenizer.json` text; rows of `seq` ids, padded with `pad_id`.
    pub fn from_json(json: &str, seq: usize, pad_id: u32) -> Result<TextEncoder, TextError> {
        let mut tokenizer = Tokenizer::from_bytes(json.as_bytes()).map_err(|e| TextError::Tokenizer(e.to_string()))?;
        let pad_token = tokenizer.id_to_token(pad_id).unwrap_or_else(|| "[PAD]".to_string());
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: seq, ..Default::default() }))
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(seq),
            direction: PaddingDirection::Right,
            pad_id,
            pad_token,
            pad_type_id: 0,
            pad_to_multiple_of: None,
        }));
        Ok(TextEncoder { tokenizer, seq })
    }

    /// Tokens per row.
    pub fn seq(&self) -> usize {
        self.seq
    }

    /// The vocabulary size the tokenizer can produce (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// One row of `seq` ids (as f32, the graph's input type) per sentence.
    pub fn encode(&self, sentences: &[&str]) -> Result<Vec<f32>, TextError> {
        let mut out = Vec::with_capacity(sentences.len() * self.seq);
        for s in sentences {
            let enc = self.tokenizer.encode(*s, true).map_err(|e| TextError::Encode { text: s.to_string(), why: e.to_string() })?;
            let ids = enc.get_ids();
            debug_assert_eq!(ids.len(), self.seq);
            out.extend(ids.iter().take(self.seq).map(|&i| i as f32));
            // Fixed padding always gives seq ids; keep the row length even if it did not.
            out.extend(std::iter::repeat_n(0.0, self.seq.saturating_sub(ids.len())));
        }
        Ok(out)
    }

    /// Number of real (non-padding) tokens each sentence gets, special tokens included.
    pub fn lengths(&self, sentences: &[&str]) -> Result<Vec<usize>, TextError> {
        sentences
            .iter()
            .map(|s| {
                let enc = self.tokenizer.encode(*s, true).map_err(|e| TextError::Encode { text: s.to_string(), why: e.to_string() })?;
                Ok(enc.get_attention_mask().iter().filter(|&&m| m == 1).count())
            })
            .collect()
    }
}

/// `tokenizer.json` text packed for a metadata entry (deflate + base64).
pub fn pack_tokenizer(json: &str) -> String {
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(json.as_bytes()).expect("writing to a Vec cannot fail");
    base64::encode(z.finish().expect("writing to a Vec cannot fail"))
}

/// The `tokenizer.json` text of a metadata entry made by [`pack_tokenizer`].
pub fn unpack_tokenizer(packed: &str) -> Result<String, TextError> {
    let bytes = base64::decode(packed.trim()).map_err(|e| TextError::Corrupt(e.to_string()))?;
    let mut out = String::new();
    flate2::read::DeflateDecoder::new(&bytes[..]).read_to_string(&mut out).map_err(|e| TextError::Corrupt(e.to_string()))?;
    Ok(out)
}

/// Non-empty lines of a text file, trimmed.
pub fn sentences(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BERT-style WordPiece tokenizer.json, written here (tests never download).
    pub(crate) fn tiny_tokenizer_json() -> String {
        crate::text::tests_support::tiny_tokenizer_json()
    }

    #[test]
    fn encodes_fixed_length_rows_with_special_tokens_and_padding() {
        let enc = TextEncoder::from_json(&tiny_tokenizer_json(), 8, 0).unwrap();
        let rows = enc.encode(&["the cat sat", "cats"]).unwrap();
        assert_eq!(rows.len(), 16);
        // [CLS] the cat sat [SEP] [PAD]…
        assert_eq!(&rows[..8], &[2.0, 5.0, 6.0, 7.0, 3.0, 0.0, 0.0, 0.0]);
        // "cats" -> cat ##s
        assert_eq!(&rows[8..13], &[2.0, 6.0, 8.0, 3.0, 0.0]);
        assert_eq!(enc.lengths(&["the cat sat", "cats"]).unwrap(), vec![5, 4]);
        // Truncation keeps the row length and the final [SEP].
        let long = enc.encode(&["the cat sat the cat sat the cat sat"]).unwrap();
        assert_eq!(long.len(), 8);
        assert_eq!(long[7], 3.0);
    }

    #[test]
    fn packed_tokenizer_round_trips_and_corruption_is_an_error() {
        let json = tiny_tokenizer_json();
        assert_eq!(unpack_tokenizer(&pack_tokenizer(&json)).unwrap(), json);
        assert!(matches!(unpack_tokenizer("not base64 !!"), Err(TextError::Corrupt(_))));
        assert!(matches!(TextEncoder::from_json("{}", 8, 0), Err(TextError::Tokenizer(_))));
    }
}

/// Test fixtures shared with the integration tests (tiny tokenizer, no download).
#[doc(hidden)]
pub mod tests_support {
    /// A BERT WordPiece tokenizer.json over a 12-token vocabulary:
    /// 0 [PAD], 1 [UNK], 2 [CLS], 3 [SEP], 4 [MASK], 5 the, 6 cat, 7 sat, 8 ##s, 9 on, 10 mat, 11 .
    pub fn tiny_tokenizer_json() -> String {
        let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "##s", "on", "mat", "."];
        let vocab_json: Vec<String> = vocab.iter().enumerate().map(|(i, t)| format!("\"{t}\": {i}")).collect();
        let added: Vec<String> = vocab[..5]
            .iter()
            .enumerate()
            .map(|(i, t)| format!(r#"{{"id": {i}, "content": "{t}", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}"#))
            .collect();
        format!(
            r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [{added}],
 "normalizer": {{"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true}},
 "pre_tokenizer": {{"type": "BertPreTokenizer"}},
 "post_processor": {{"type": "TemplateProcessing",
   "single": [{{"SpecialToken": {{"id": "[CLS]", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}}, {{"SpecialToken": {{"id": "[SEP]", "type_id": 0}}}}],
   "pair": [{{"SpecialToken": {{"id": "[CLS]", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}}, {{"SpecialToken": {{"id": "[SEP]", "type_id": 0}}}}, {{"Sequence": {{"id": "B", "type_id": 1}}}}, {{"SpecialToken": {{"id": "[SEP]", "type_id": 1}}}}],
   "special_tokens": {{"[CLS]": {{"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}}, "[SEP]": {{"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}}}}},
 "decoder": {{"type": "WordPiece", "prefix": "{pfx}", "cleanup": true}},
 "model": {{"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "{pfx}", "max_input_chars_per_word": 100, "vocab": {{{vocab}}}}}}}"#,
            added = added.join(", "),
            vocab = vocab_json.join(", "),
            pfx = "##"
        )
    }
}

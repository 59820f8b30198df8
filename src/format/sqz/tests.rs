//! Tests of the `.sqz` container: round trips of every tensor kind and encoding, error
//! messages, limits, and the fuzz-style tests (every byte flip, every truncation, random
//! mutations) that decoding never panics.

use super::*;
use super::encode::deflate;
use super::frame::{crc, le_u32, push_section};
use crate::codec::{PositionCoding, huffman};
use crate::rng::Rng;
use crate::spec::{INPUT, Node, Op, QParams};

fn fuzz_limits() -> Limits {
    Limits { max_bytes: 1 << 20, ..Limits::default() }
}

fn two_head_residual() -> Graph {
    let lin = |i, o| Op::Linear { in_features: i, out_features: o, bias: true };
    Graph {
        input_shape: vec![8],
        nodes: vec![
            Node { name: "a".into(), inputs: vec![INPUT.into()], op: lin(8, 8) },
            Node { name: "r".into(), inputs: vec!["a".into()], op: Op::Relu },
            Node { name: "sum".into(), inputs: vec!["r".into(), INPUT.into()], op: Op::Add },
            Node { name: "h1".into(), inputs: vec!["sum".into()], op: lin(8, 3) },
            Node { name: "h2".into(), inputs: vec!["sum".into()], op: lin(8, 2) },
        ],
        outputs: vec!["h1".into(), "h2".into()],
        io_names: Default::default(),
    }
}

/// Streaming write gives the bytes of `encode_with`; reading a file section by
/// section gives what decoding its bytes gives, including the errors of a
/// truncated or corrupted file; the summary of a file keeps no tensor.
#[test]
fn streamed_files_equal_in_memory_encoding_and_decoding() {
    let dir = std::env::temp_dir().join(format!("sqz-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = sample_model();
    for entropy in [false, true] {
        let opts = EncodeOptions { entropy_coding: entropy };
        let path = dir.join(format!("m{entropy}.sqz"));
        let n = write_sqz_streaming(&path, m.clone(), &opts).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes, encode_with(&m, &opts).unwrap());
        assert_eq!(n, bytes.len() as u64);
        assert_eq!(read_sqz(&path).unwrap(), decode(&bytes, &Limits::default()).unwrap());
        assert_eq!(summarize_file(&path).unwrap(), summarize(&bytes, &Limits::default()).unwrap());
        // Damaged files: the same error from the file as from its bytes.
        for damaged in [bytes[..bytes.len() - 3].to_vec(), bytes[..HEADER_LEN + 20].to_vec(), bytes[..5].to_vec(), {
            let mut b = bytes.clone();
            let k = b.len() / 2;
            b[k] ^= 0x40;
            b
        }] {
            let p = dir.join("damaged.sqz");
            std::fs::write(&p, &damaged).unwrap();
            let want = decode(&damaged, &Limits::default()).unwrap_err().to_string();
            assert_eq!(read_sqz(&p).unwrap_err().to_string(), want);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Dense f32, dense int8, sparse f32 and sparse int8 tensors on a residual two-head graph.
fn sample_model() -> SqzModel {
    let mut rng = Rng::new(5);
    let mut a_w: Vec<f32> = (0..64).map(|_| rng.uniform(1.0)).collect();
    a_w[3] = -0.0;
    let quant = QuantPlan {
        integer_nodes: ["h1".to_string()].into(),
        activations: [("sum".to_string(), QParams { scale: 0.02, zero_point: 3 })].into(),
        ..Default::default()
    };
    SqzModel {
        graph: two_head_residual(),
        quant,
        tensors: vec![
            StoredTensor {
                name: "a.weight".into(),
                shape: vec![8, 8],
                values: Values::F32(a_w),
                positions: None,
            },
            StoredTensor {
                name: "a.bias".into(),
                shape: vec![8],
                values: Values::I8 {
                    q: vec![-128, -1, 0, 1, 2, 3, 127, 5],
                    scales: (0..8).map(|i| 0.01 * i as f32).collect(),
                },
                positions: None,
            },
            StoredTensor {
                name: "h1.weight".into(),
                shape: vec![3, 8],
                values: Values::I8 { q: vec![5, -7, 9, 100], scales: vec![0.5, 0.25, 0.125] },
                positions: Some(vec![0, 9, 10, 23]),
            },
            StoredTensor {
                name: "h1.bias".into(),
                shape: vec![3],
                values: Values::F32(vec![0.5, -0.0, 1e-30]),
                positions: None,
            },
            StoredTensor {
                name: "h2.weight".into(),
                shape: vec![2, 8],
                values: Values::F32(vec![1.5, -2.5]),
                positions: Some(vec![3, 15]),
            },
            StoredTensor {
                name: "h2.bias".into(),
                shape: vec![2],
                values: Values::F32(vec![]),
                positions: Some(vec![]),
            },
        ],
        metadata: [("note".to_string(), "two heads".to_string())].into(),
    }
}

fn with_producer(mut m: SqzModel) -> SqzModel {
    m.metadata.insert("producer".into(), format!("squeeze {}", env!("CARGO_PKG_VERSION")));
    m
}

fn section(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    push_section(&mut out, *kind, payload).unwrap();
    out
}

/// Offsets of every section: (offset, kind, payload length).
fn sections(bytes: &[u8]) -> Vec<(usize, [u8; 4], usize)> {
    let mut pos = HEADER_LEN;
    let mut out = Vec::new();
    while pos + 8 <= bytes.len() {
        let kind: [u8; 4] = bytes[pos..pos + 4].try_into().unwrap();
        let len = le_u32(&bytes[pos + 4..pos + 8]) as usize;
        if pos + 12 + len > bytes.len() {
            break;
        }
        out.push((pos, kind, len));
        pos += 12 + len;
    }
    out
}

/// Recomputes every CRC so that mutations reach the payload parsers.
fn fix_crcs(bytes: &mut [u8]) {
    for (pos, kind, len) in sections(bytes) {
        let c = crc(&kind, &bytes[pos + 8..pos + 8 + len]);
        bytes[pos + 8 + len..pos + 12 + len].copy_from_slice(&c.to_le_bytes());
    }
}

#[test]
fn round_trips_all_tensor_kinds_exactly() {
    let m = sample_model();
    let bytes = encode(&m).unwrap();
    assert!(crate::format::is_sqz(&bytes));
    let back = decode(&bytes, &Limits::default()).unwrap();
    assert_eq!(back, with_producer(m.clone()));
    // -0.0 == 0.0 under PartialEq: compare bits too.
    for (a, b) in m.tensors.iter().zip(&back.tensors) {
        if let (Values::F32(x), Values::F32(y)) = (&a.values, &b.values) {
            assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }
    // A present producer is kept.
    let mut m2 = m.clone();
    m2.metadata.insert("producer".into(), "other".into());
    assert_eq!(decode(&encode(&m2).unwrap(), &Limits::default()).unwrap(), m2);
    // The summary accounts for every byte.
    let s = summarize(&bytes, &Limits::default()).unwrap();
    assert_eq!(8 + s.iter().map(|x| x.total_bytes).sum::<usize>(), bytes.len());
    assert!(s[0].encoding.starts_with("json"), "{}", s[0].encoding);
    assert_eq!(s[1].tensor.as_deref(), Some("a.weight"));
    assert!(s[1].encoding.starts_with("f32 dense"), "{}", s[1].encoding);
    assert!(s[3].encoding.starts_with("sparse-int8/ch "), "{}", s[3].encoding);
    assert_eq!(s.last().unwrap().kind, "END ");
}

#[test]
fn tensor_helpers() {
    let m = sample_model();
    let h1 = &m.tensors[2];
    assert_eq!(h1.numel(), 24);
    assert_eq!(h1.nonzeros(), 4);
    assert_eq!(h1.encoding_name(), "sparse-int8/ch");
    let d = h1.to_dense_f32();
    assert_eq!(d.len(), 24);
    assert_eq!((d[0], d[9], d[10], d[23], d[1]), (2.5, -1.75, 2.25, 12.5, 0.0));
    assert_eq!(m.tensors[0].encoding_name(), "f32");
    assert_eq!(m.tensors[1].encoding_name(), "int8/ch");
    assert_eq!(m.tensors[1].nonzeros(), 6); // q = 0 and scale 0 give zeros
    assert_eq!(m.tensors[4].encoding_name(), "sparse-f32");
    assert_eq!(m.tensors[4].to_dense_f32()[15], -2.5);
}

#[test]
fn every_single_byte_flip_is_detected() {
    let bytes = encode(&sample_model()).unwrap();
    let original = decode(&bytes, &Limits::default()).unwrap();
    for i in 0..bytes.len() {
        for x in [0x01u8, 0x80, 0xFF] {
            let mut b = bytes.clone();
            b[i] ^= x;
            match decode(&b, &fuzz_limits()) {
                Err(_) => {}
                // Only the minor version may change: 1.x readers accept newer minors.
                Ok(m) => assert!((6..8).contains(&i) && m == original, "flip at {i} accepted"),
            }
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = encode(&sample_model()).unwrap();
    for n in 0..bytes.len() {
        assert!(decode(&bytes[..n], &fuzz_limits()).is_err(), "length {n}");
    }
    let tail = [0u8];
    let mut extended = bytes.clone();
    extended.extend_from_slice(&tail);
    assert!(matches!(decode(&extended, &fuzz_limits()), Err(FormatError::Corrupt(_))));
}

#[test]
fn error_messages_say_what_is_wrong() {
    let bytes = encode(&sample_model()).unwrap();
    let (pos, _, len) = sections(&bytes)[2]; // a.bias
    let cut = pos + 8 + len - 3;
    let e = decode(&bytes[..cut], &Limits::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "file is truncated: tensor 'a.bias' needs {} bytes, {} remain",
            len + 4,
            len - 3
        )
    );
    let e = decode(b"PK\x03\x04rest", &Limits::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "not a .sqz file (magic bytes are 50 4b 03 04, expected 89 53 51 5a)"
    );
    let mut v2 = bytes.clone();
    v2[4] = 2;
    let e = decode(&v2, &Limits::default()).unwrap_err();
    assert!(matches!(e, FormatError::UnsupportedVersion { major: 2, minor: 0 }));
    let e = decode(&bytes[..bytes.len() - 12], &Limits::default()).unwrap_err();
    assert!(matches!(e, FormatError::Truncated { needed: 8, available: 0, .. }), "{e}");
    let mut flipped = bytes.clone();
    flipped[pos + 10] ^= 1;
    assert!(matches!(
        decode(&flipped, &Limits::default()),
        Err(FormatError::ChecksumMismatch { ref section, .. }) if section == "TENS"
    ));
    let small = Limits { max_bytes: 100, ..Limits::default() };
    assert!(matches!(decode(&bytes, &small), Err(FormatError::LimitExceeded { .. })));
}

#[test]
fn random_bytes_and_mutations_never_panic() {
    let mut rng = Rng::new(42);
    let valid = encode(&sample_model()).unwrap();
    for i in 0..4000 {
        let len = rng.below(300);
        let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if i % 2 == 0 && b.len() >= 8 {
            b[..8].copy_from_slice(&valid[..8]);
        }
        let _ = decode(&b, &fuzz_limits());
    }
    mutations_decode_or_fail_cleanly(&valid, &mut rng, 4);
}

#[test]
fn bitmap_at_half_density_gaps_at_five_percent() {
    let mut rng = Rng::new(9);
    let mut make = |name: &str, density: f32| {
        let mut positions: Vec<u32> =
            (0..10_000u32).filter(|_| rng.next_f32() < density).collect();
        if positions.last() != Some(&9_999) {
            positions.push(9_999);
        }
        let q = positions.iter().map(|_| 1 + rng.below(100) as i8).collect();
        StoredTensor {
            name: name.into(),
            shape: vec![100, 100],
            values: Values::I8 { q, scales: vec![0.1; 100] },
            positions: Some(positions),
        }
    };
    let mut m = sample_model();
    m.tensors = vec![make("half", 0.5), make("sparse", 0.05)];
    let bytes = encode(&m).unwrap();
    let s = summarize(&bytes, &Limits::default()).unwrap();
    assert!(s[1].encoding.starts_with("sparse-int8/ch bitmap"), "{}", s[1].encoding);
    assert!(s[2].encoding.starts_with("sparse-int8/ch gaps"), "{}", s[2].encoding);
    assert_eq!(decode(&bytes, &Limits::default()).unwrap(), with_producer(m));
}

#[test]
fn seed_sized_int8_model_fits_the_budget() {
    // 784-32-10 MLP: 25,408 int8 weights (uniform random: the worst case for deflate).
    let mut rng = Rng::new(1);
    let lin = |i, o| Op::Linear { in_features: i, out_features: o, bias: true };
    let graph = Graph::chain(
        vec![784],
        vec![("fc1", lin(784, 32)), ("r", Op::Relu), ("fc2", lin(32, 10))],
    );
    let mut tensors = Vec::new();
    for p in graph.parameters() {
        let n = p.numel();
        let values = if p.shape.len() == 2 {
            Values::I8 {
                q: (0..n).map(|_| rng.below(255) as i32 as i8).collect(),
                scales: (0..p.shape[0]).map(|_| rng.next_f32() * 0.01).collect(),
            }
        } else {
            Values::F32((0..n).map(|_| rng.uniform(0.1)).collect())
        };
        tensors.push(StoredTensor { name: p.name, shape: p.shape, values, positions: None });
    }
    let m = SqzModel { graph, quant: QuantPlan::default(), tensors, metadata: BTreeMap::new() };
    let bytes = encode(&m).unwrap();
    assert!(bytes.len() <= 33_000, "{} bytes", bytes.len());
    assert_eq!(decode(&bytes, &Limits::default()).unwrap(), with_producer(m));
}

fn insert_after_meta(bytes: &[u8], extra: &[u8]) -> Vec<u8> {
    let (pos, _, len) = sections(bytes)[0];
    let at = pos + 12 + len;
    [&bytes[..at], extra, &bytes[at..]].concat()
}

#[test]
fn unknown_ancillary_is_skipped_unknown_critical_is_refused() {
    let m = sample_model();
    let bytes = encode(&m).unwrap();
    let with_text = insert_after_meta(&bytes, &section(b"teXt", b"hello"));
    assert_eq!(decode(&with_text, &Limits::default()).unwrap(), with_producer(m));
    let s = summarize(&with_text, &Limits::default()).unwrap();
    assert_eq!(s[1].kind, "teXt");
    let with_crit = insert_after_meta(&bytes, &section(b"TEXT", b"hello"));
    assert!(matches!(
        decode(&with_crit, &Limits::default()),
        Err(FormatError::UnknownCritical { ref kind }) if kind == "TEXT"
    ));
}

/// A TENS payload with a chosen header and raw body bytes.
fn tens_payload(
    shape: &[u32],
    vt: u8,
    pos: &[u8],
    count: u32,
    body_coding: u8,
    body: &[u8],
) -> Vec<u8> {
    let mut p = vec![1, 0, b'w', shape.len() as u8];
    shape.iter().for_each(|d| p.extend_from_slice(&d.to_le_bytes()));
    p.push(vt);
    p.extend_from_slice(pos);
    p.extend_from_slice(&count.to_le_bytes());
    p.push(body_coding);
    p.extend_from_slice(body);
    p
}

#[test]
fn metadata_is_deflated_when_smaller_and_reads_back() {
    let m = sample_model();
    let bytes = encode(&m).unwrap();
    let s = summarize(&bytes, &Limits::default()).unwrap();
    assert_eq!(s[0].kind, "MDEF");
    assert_eq!(s[0].encoding, "json+deflate");
    let mut back = decode(&bytes, &Limits::default()).unwrap();
    back.metadata.remove("producer");
    let mut want = m.clone();
    want.metadata.remove("producer");
    assert_eq!(back, want);
    let plain = encode_with(&m, &EncodeOptions { entropy_coding: false }).unwrap();
    assert_eq!(summarize(&plain, &Limits::default()).unwrap()[0].kind, "META");
    assert!(plain.len() > bytes.len());
}

fn file_with(tens: &[u8]) -> Vec<u8> {
    let mut m = sample_model();
    m.tensors.clear();
    let bytes = encode_with(&m, &EncodeOptions { entropy_coding: false }).unwrap();
    let (pos, _, len) = sections(&bytes)[0];
    let json = String::from_utf8(bytes[pos + 8..pos + 8 + len].to_vec()).unwrap();
    let json = json.replace("\"tensor_count\":0", "\"tensor_count\":1");
    [
        &bytes[..8],
        &section(b"META", json.as_bytes()),
        &section(b"TENS", tens),
        &section(b"END ", b""),
    ]
    .concat()
}

#[test]
fn deflate_bombs_and_inconsistent_bodies_are_refused() {
    // Baseline: a hand-made dense f32 tensor decodes.
    let ok = file_with(&tens_payload(&[2], VT_F32, &[POS_DENSE], 2, BODY_RAW, &[0; 8]));
    assert_eq!(
        decode(&ok, &Limits::default()).unwrap().tensors[0].values,
        Values::F32(vec![0.0; 2])
    );
    // 10 MB of zeros deflated, claimed to be a 1000-element tensor body.
    let bomb = deflate(&vec![0u8; 10 << 20]).unwrap();
    let f = file_with(&tens_payload(&[1000], VT_F32, &[POS_DENSE], 1000, BODY_DEFLATE, &bomb));
    let e = decode(&f, &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("inflates beyond"), "{e}");
    // A huge sparse tensor whose bound is large: capped by the max_bytes budget.
    let f =
        file_with(&tens_payload(&[u32::MAX], VT_F32, &[POS_BITMAP], 0, BODY_DEFLATE, &bomb));
    assert!(matches!(decode(&f, &fuzz_limits()), Err(FormatError::LimitExceeded { .. })));
    // Wrong value count, bad coding bytes, trailing body bytes, huge shapes.
    for payload in [
        tens_payload(&[2], VT_F32, &[POS_DENSE], 1, BODY_RAW, &[0; 4]),
        tens_payload(&[2], VT_F32, &[POS_DENSE], 2, BODY_RAW, &[0; 9]),
        tens_payload(&[2], VT_F32, &[POS_DENSE], 2, BODY_RAW, &[0; 7]),
        tens_payload(&[2], 7, &[POS_DENSE], 2, BODY_RAW, &[0; 8]),
        tens_payload(&[2], VT_F32, &[9], 2, BODY_RAW, &[0; 8]),
        tens_payload(&[2], VT_F32, &[POS_GAPS, 9], 1, BODY_RAW, &[0; 5]),
        tens_payload(&[2], VT_F32, &[POS_DENSE], 2, 5, &[0; 8]),
        tens_payload(&[65536, 65536], VT_F32, &[POS_BITMAP], 0, BODY_RAW, &[]),
        tens_payload(&[8], VT_F32, &[POS_BITMAP], 1, BODY_RAW, &[3, 0, 0, 0, 0]),
        tens_payload(&[], VT_I8, &[POS_DENSE], 1, BODY_RAW, &[0]),
        tens_payload(&[1; 9], VT_F32, &[POS_DENSE], 1, BODY_RAW, &[0; 4]),
    ] {
        assert!(decode(&file_with(&payload), &Limits::default()).is_err());
    }
}

#[test]
fn encode_rejects_inconsistent_models() {
    let cases: Vec<fn(&mut SqzModel)> = vec![
        |m| m.tensors[4].positions = Some(vec![15, 3]),
        |m| m.tensors[4].positions = Some(vec![3, 16]),
        |m| m.tensors[4].positions = Some(vec![3]),
        |m| m.tensors[0].values = Values::F32(vec![0.0; 63]),
        |m| m.tensors[1].values = Values::I8 { q: vec![0; 8], scales: vec![1.0; 7] },
        |m| m.tensors[1].name = "a.weight".into(),
        |m| m.tensors[1].name = String::new(),
        |m| m.tensors[3].shape = vec![1; 9],
        |m| {
            m.quant.activations.insert("x".into(), QParams { scale: f32::NAN, zero_point: 0 });
        },
    ];
    for (i, break_it) in cases.into_iter().enumerate() {
        let mut m = sample_model();
        break_it(&mut m);
        assert!(matches!(encode(&m), Err(FormatError::Invalid(_))), "case {i}");
    }
}

#[test]
fn file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sqz");
    let m = sample_model();
    let n = write_sqz_streaming(&path, m.clone(), &EncodeOptions::default()).unwrap();
    assert_eq!(n, std::fs::metadata(&path).unwrap().len());
    assert_eq!(read_sqz(&path).unwrap(), with_producer(m));
    let e = read_sqz(&dir.path().join("missing.sqz")).unwrap_err();
    assert!(matches!(e, FormatError::Io { .. }) && e.to_string().contains("missing.sqz"));
}

// -----------------------------------------------------------------------------
// Codebooks, Huffman and f16 components

fn gaussian(rng: &mut Rng) -> f32 {
    let u = rng.next_f32().max(1e-7);
    let v = rng.next_f32();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
}

fn f16_round(x: f32) -> f32 {
    codec::f16::to_f32(codec::f16::from_f32(x))
}

/// A Deep Compression layer: Gaussian weights pruned by magnitude to `density`,
/// the survivors shared by `k` centroids (linear initialisation, 8 Lloyd
/// iterations), centroids rounded to f16 when `round`.
fn shared_layer(
    rng: &mut Rng,
    name: &str,
    shape: [usize; 2],
    density: f32,
    k: usize,
    round: bool,
) -> StoredTensor {
    let n = shape[0] * shape[1];
    let w: Vec<f32> = (0..n).map(|_| 0.05 * gaussian(rng)).collect();
    let mut mags: Vec<f32> = w.iter().map(|x| x.abs()).collect();
    mags.sort_by(f32::total_cmp);
    let threshold = mags[((1.0 - density) * n as f32) as usize];
    let positions: Vec<u32> =
        (0..n as u32).filter(|&i| w[i as usize].abs() >= threshold).collect();
    let kept: Vec<f32> = positions.iter().map(|&i| w[i as usize]).collect();
    let (lo, hi) = kept.iter().fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let mut centroids: Vec<f32> =
        (0..k).map(|j| lo + (hi - lo) * j as f32 / (k - 1) as f32).collect();
    let nearest = |c: &[f32], x: f32| {
        (0..c.len()).min_by(|&a, &b| (c[a] - x).abs().total_cmp(&(c[b] - x).abs())).unwrap()
    };
    for _ in 0..8 {
        let mut sum = vec![0f64; k];
        let mut cnt = vec![0usize; k];
        for &x in &kept {
            let j = nearest(&centroids, x);
            sum[j] += f64::from(x);
            cnt[j] += 1;
        }
        for j in 0..k {
            if cnt[j] > 0 {
                centroids[j] = (sum[j] / cnt[j] as f64) as f32;
            }
        }
    }
    if round {
        centroids.iter_mut().for_each(|c| *c = f16_round(*c));
    }
    let indices = kept.iter().map(|&x| nearest(&centroids, x) as u16).collect();
    StoredTensor {
        name: name.into(),
        shape: shape.to_vec(),
        values: Values::Codebook { indices, centroids },
        positions: Some(positions),
    }
}

/// A small model using every new component: Huffman gaps, Huffman and packed
/// indices, f16 and f32 centroids, f16 values, Huffman int8.
fn codebook_model() -> SqzModel {
    let mut rng = Rng::new(21);
    let mut m = sample_model();
    let positions: Vec<u32> = (0..512).filter(|_| rng.next_f32() < 0.25).collect();
    let skewed = |r: &mut Rng| match r.below(20) {
        0..=13 => 0u16,
        14..=17 => 1,
        18 => 2,
        _ => 3,
    };
    let indices = positions.iter().map(|_| skewed(&mut rng)).collect();
    m.tensors = vec![
        StoredTensor {
            name: "a.weight".into(),
            shape: vec![16, 32],
            values: Values::Codebook { indices, centroids: vec![-0.5, 0.25, 1.5, -0.0] },
            positions: Some(positions),
        },
        StoredTensor {
            name: "a.bias".into(),
            shape: vec![40],
            values: Values::Codebook {
                indices: (0..40).map(|_| rng.below(3) as u16).collect(),
                centroids: vec![0.1, -0.2, 0.3],
            },
            positions: None,
        },
        StoredTensor {
            name: "h1.weight".into(),
            shape: vec![8, 32],
            values: Values::I8 {
                q: (0..256).map(|_| (gaussian(&mut rng) * 3.0).round() as i8).collect(),
                scales: vec![0.01; 8],
            },
            positions: None,
        },
        StoredTensor {
            name: "h1.bias".into(),
            shape: vec![16],
            values: Values::F32((0..16).map(|i| (i as f32 - 8.0) / 64.0).collect()),
            positions: None,
        },
    ];
    m
}

fn summaries(m: &SqzModel) -> (Vec<u8>, Vec<SectionSummary>) {
    let bytes = encode(m).unwrap();
    let s = summarize(&bytes, &Limits::default()).unwrap();
    assert_eq!(8 + s.iter().map(|x| x.total_bytes).sum::<usize>(), bytes.len());
    for x in &s {
        assert!(x.index_bytes + x.value_bytes <= x.payload_bytes, "{x:?}");
    }
    (bytes, s)
}

fn assert_same_bits(a: &SqzModel, b: &SqzModel) {
    assert_eq!(with_producer(a.clone()), *b);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        match (&x.values, &y.values) {
            (Values::F32(p), Values::F32(q)) => assert_eq!(bits(p), bits(q)),
            (Values::Codebook { centroids: p, .. }, Values::Codebook { centroids: q, .. }) => {
                assert_eq!(bits(p), bits(q))
            }
            _ => {}
        }
    }
}

#[test]
fn small_codebook_model_uses_every_new_component() {
    let m = codebook_model();
    let (bytes, s) = summaries(&m);
    assert_same_bits(&m, &decode(&bytes, &Limits::default()).unwrap());
    let enc: Vec<&str> = s.iter().map(|x| x.encoding.as_str()).collect();
    assert!(
        enc[1].starts_with("sparse-codebook-4 gaps-huff/s")
            && enc[1].ends_with(" + idx-huff + c-f16"),
        "{}",
        enc[1]
    );
    assert_eq!(enc[2], "codebook-3 dense + idx-packed + c-f32");
    assert_eq!(enc[3], "int8/ch dense + v-huff");
    assert_eq!(enc[4], "f32 dense + v-f16");
    // Byte accounting: positions exactly, the rest of the body as values.
    let t = &m.tensors[0];
    let Some(PositionCoding::HuffmanGaps { span_log2 }) =
        Some(codec::choose_position_coding(t.positions.as_ref().unwrap(), 512).0)
    else {
        panic!("expected Huffman gaps");
    };
    let pos = codec::encode_huffman_gaps(t.positions.as_ref().unwrap(), span_log2).unwrap();
    assert_eq!(s[1].index_bytes, pos.len());
    assert_eq!(s[2].index_bytes, 0);
    // Header: 2 + 8 name + 1 rank + 8 dims + 1 type + 2 coding + 4 count + 1 body.
    assert_eq!(s[1].payload_bytes - s[1].index_bytes - s[1].value_bytes, 27);
    assert_eq!(s[3].value_bytes, s[3].payload_bytes - (2 + 9 + 1 + 8 + 1 + 1 + 4 + 1));
    let h = &m.tensors[0];
    assert_eq!(h.encoding_name(), "sparse-codebook-4");
    assert_eq!(m.tensors[1].encoding_name(), "codebook-3");
    let d = h.to_dense_f32();
    let p = h.positions.as_ref().unwrap();
    let Values::Codebook { indices, centroids } = &h.values else { unreachable!() };
    assert_eq!(d[p[3] as usize], centroids[indices[3] as usize]);
    assert_eq!(d.iter().filter(|x| **x != 0.0).count(), h.nonzeros());
    assert_eq!(h.nonzeros(), indices.iter().filter(|&&i| i != 3).count()); // -0.0 is zero
}

#[test]
fn codebook_models_round_trip_exactly() {
    let mut rng = Rng::new(3);
    let mut m = sample_model();
    m.tensors.clear();
    for (i, (k, density)) in
        [(32, 0.05), (32, 0.5), (256, 0.05), (256, 0.5)].into_iter().enumerate()
    {
        m.tensors.push(shared_layer(
            &mut rng,
            &format!("s{i}"),
            [100, 200],
            density,
            k,
            i % 2 == 0,
        ));
    }
    // Dense codebook, f16-exact biases (and one that is not), int8 Huffman.
    let mut dense = shared_layer(&mut rng, "dense", [50, 40], 1.0, 16, false);
    dense.positions = None;
    m.tensors.push(dense);
    m.tensors.push(StoredTensor {
        name: "bias16".into(),
        shape: vec![300],
        values: Values::F32((0..300).map(|_| f16_round(gaussian(&mut rng) * 0.1)).collect()),
        positions: None,
    });
    m.tensors.push(StoredTensor {
        name: "bias32".into(),
        shape: vec![300],
        values: Values::F32((0..300).map(|_| gaussian(&mut rng) * 0.1).collect()),
        positions: None,
    });
    m.tensors.push(StoredTensor {
        name: "q".into(),
        shape: vec![100, 100],
        values: Values::I8 {
            q: (0..10_000).map(|_| (gaussian(&mut rng) * 6.0).round() as i8).collect(),
            scales: (0..100).map(|_| rng.next_f32() * 0.01).collect(),
        },
        positions: None,
    });
    let sparse_q = shared_layer(&mut rng, "sq", [100, 100], 0.1, 2, false);
    let Values::Codebook { indices, .. } = &sparse_q.values else { unreachable!() };
    m.tensors.push(StoredTensor {
        name: "sq".into(),
        shape: vec![100, 100],
        values: Values::I8 {
            q: indices.iter().map(|&i| (i as i8 * 9) - 4).collect(),
            scales: vec![0.5; 100],
        },
        positions: sparse_q.positions.clone(),
    });
    let (bytes, s) = summaries(&m);
    let back = decode(&bytes, &Limits::default()).unwrap();
    assert_same_bits(&m, &back);
    for x in &s[1..s.len() - 1] {
        let t = m.tensors.iter().find(|t| Some(&t.name) == x.tensor.as_ref()).unwrap();
        println!(
            "{:<7} {:>6} stored: {:>6} B = {:>5} index + {:>6} value  {}",
            t.name,
            t.values.len(),
            x.payload_bytes,
            x.index_bytes,
            x.value_bytes,
            x.encoding
        );
    }
    assert!(s[1].encoding.contains("idx-huff") && s[1].encoding.ends_with("c-f16"));
    assert!(s[2].encoding.ends_with("c-f32"), "{}", s[2].encoding);
    assert!(s[2].encoding.contains(" bitmap "), "{}", s[2].encoding); // density 0.5
    assert!(s[5].encoding.starts_with("codebook-16 dense + idx-"), "{}", s[5].encoding);
    assert_eq!(s[6].encoding, "f32 dense + v-f16");
    assert!(s[6].payload_bytes < 300 * 2 + 30);
    assert!(s[7].encoding.starts_with("f32 dense") && !s[7].encoding.contains("f16"));
    assert_eq!(s[8].encoding, "int8/ch dense + v-huff");
    assert!(s[9].encoding.starts_with("sparse-int8/ch gaps-huff/s"), "{}", s[9].encoding);
}

#[test]
fn sparse_codebook_layer_costs_about_its_entropy() {
    // LeNet-300-100's fc1 (300 × 784 = 235,200 weights) at 8% density, k = 32.
    let mut rng = Rng::new(300);
    let t = shared_layer(&mut rng, "fc1.weight", [300, 784], 0.08, 32, true);
    let n = t.values.len();
    // Empirical entropies: of the gaps (geometric, unbounded alphabet) and indices.
    let entropy = |counts: &std::collections::HashMap<u32, usize>| {
        let total = counts.values().sum::<usize>() as f64;
        counts.values().map(|&c| -(c as f64 / total) * (c as f64 / total).log2()).sum::<f64>()
            * total
    };
    let mut gaps = std::collections::HashMap::new();
    let mut next = 0;
    for &p in t.positions.as_ref().unwrap() {
        *gaps.entry(p - next).or_insert(0) += 1;
        next = p + 1;
    }
    let Values::Codebook { indices, .. } = &t.values else { unreachable!() };
    let mut idx = std::collections::HashMap::new();
    indices.iter().for_each(|&i| *idx.entry(u32::from(i)).or_insert(0) += 1);
    let (h_pos, h_idx) = (entropy(&gaps) / 8.0, entropy(&idx) / 8.0);

    let mut m = sample_model();
    m.tensors = vec![t];
    let (bytes, s) = summaries(&m);
    assert_same_bits(&m, &decode(&bytes, &Limits::default()).unwrap());
    let x = &s[1];
    let per = |b: usize| b as f64 / n as f64;
    println!(
        "fc1 {n} of 235200 stored ({}): {} B payload = {:.3} B/weight; positions {} B \
         ({:.3} B/w, entropy {:.3}), indices+codebook {} B ({:.3} B/w, entropy {:.3}); \
         fixed 5-bit indices would be {:.3} B/w",
        x.encoding,
        x.payload_bytes,
        per(x.payload_bytes),
        x.index_bytes,
        per(x.index_bytes),
        h_pos / n as f64,
        x.value_bytes,
        per(x.value_bytes),
        h_idx / n as f64,
        5.0 / 8.0
    );
    assert!(x.encoding.starts_with("sparse-codebook-32 gaps-huff/s"), "{}", x.encoding);
    assert!(x.encoding.ends_with(" + idx-huff + c-f16"), "{}", x.encoding);
    // Within 2% (+ tables) of the order-0 entropy of gaps and indices. That
    // entropy is the floor for symbol-by-symbol coding: i.i.d. positions at 8%
    // carry H(0.08)/0.08 = 5.03 bits each, so with ~3.4-bit indices a layer
    // without structure in its pruning mask costs just over a byte per weight.
    assert!((x.index_bytes as f64) < h_pos * 1.02 + 64.0);
    assert!((x.value_bytes as f64) < h_idx * 1.02 + 64.0 + 64.0);
    assert!(per(x.payload_bytes) < 1.1, "{:.3} B/weight", per(x.payload_bytes));
    // Against the fixed-width baseline (4-bit gaps as in the paper, 5-bit indices).
    let fixed = codec::gaps_bit_len(m.tensors[0].positions.as_ref().unwrap(), 4).unwrap();
    let fixed = (fixed + 5 * n as u64).div_ceil(8) as f64;
    println!("fixed 4-bit gaps + 5-bit indices: {fixed} B = {:.3} B/weight", fixed / n as f64);
    assert!((x.payload_bytes as f64) < fixed * 0.9);
}

#[test]
fn encoding_choices_follow_the_data() {
    let mut rng = Rng::new(17);
    let codebook = |indices: Vec<u16>, k: usize, centroids: Vec<f32>| StoredTensor {
        name: "w".into(),
        shape: vec![indices.len()],
        values: Values::Codebook { indices, centroids: centroids[..k].to_vec() },
        positions: None,
    };
    let exact: Vec<f32> = (0..32).map(|i| i as f32 / 16.0 - 1.0).collect();
    let inexact: Vec<f32> = (0..32).map(|i| i as f32 / 10.0 - 1.0).collect();
    let uniform: Vec<u16> = (0..5000).map(|_| rng.below(32) as u16).collect();
    let skewed: Vec<u16> =
        (0..5000).map(|_| ((gaussian(&mut rng).abs() * 3.0) as u16).min(31)).collect();
    let mut one_bad = exact.clone();
    one_bad[7] = 1.0 + 2f32.powi(-12); // needs 12 fraction bits: not an f16
    let mut nan = exact.clone();
    nan[0] = f32::NAN;
    let cases = [
        (
            codebook(uniform.clone(), 32, exact.clone()),
            "codebook-32 dense + idx-packed + c-f16",
        ),
        (codebook(skewed.clone(), 32, exact.clone()), "codebook-32 dense + idx-huff + c-f16"),
        (codebook(skewed, 32, inexact), "codebook-32 dense + idx-huff + c-f32"),
        (codebook(uniform.clone(), 32, one_bad), "codebook-32 dense + idx-packed + c-f32"),
        (codebook(uniform, 32, nan), "codebook-32 dense + idx-packed + c-f32"),
        (codebook(vec![0; 100], 1, exact.clone()), "codebook-1 dense + idx-packed + c-f16"),
        (codebook(vec![], 0, exact.clone()), "codebook-0 dense + idx-packed + c-f16"),
    ];
    for (t, expect) in cases {
        let mut m = sample_model();
        m.tensors = vec![t];
        let (bytes, s) = summaries(&m);
        assert_eq!(s[1].encoding, expect);
        let back = decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(encode(&back).unwrap(), bytes); // NaN-safe equality
    }
    // f16 for f32 values only when every value is exact: subnormal halves, ±0 and
    // ±inf are; 1e-30, 0.1 and NaN are not.
    let tiny = 2f32.powi(-24);
    for (v, f16) in [
        (vec![0.5, -0.0, tiny, -3.0 * tiny, 65504.0, f32::INFINITY, 1.0], true),
        (vec![0.5, -0.0, 1e-30, 0.25, 1.0, 2.0, 4.0], false),
        (vec![0.5, 0.1, 0.25, 1.0, 2.0, 4.0, 8.0], false),
        (vec![0.5, f32::NAN, 0.25, 1.0, 2.0, 4.0, 8.0], false),
    ] {
        let mut m = sample_model();
        m.tensors = vec![StoredTensor {
            name: "b".into(),
            shape: vec![v.len()],
            values: Values::F32(v),
            positions: None,
        }];
        let (bytes, s) = summaries(&m);
        assert_eq!(s[1].encoding.contains("v-f16"), f16, "{}", s[1].encoding);
        assert_eq!(encode(&decode(&bytes, &Limits::default()).unwrap()).unwrap(), bytes);
    }
}

#[test]
fn encode_rejects_bad_codebooks() {
    let t = |indices: Vec<u16>, k: usize| StoredTensor {
        name: "w".into(),
        shape: vec![indices.len()],
        values: Values::Codebook { indices, centroids: vec![0.5; k] },
        positions: None,
    };
    for bad in [t(vec![0, 3, 1], 3), t(vec![0], 0), t(vec![0], MAX_CENTROIDS + 1)] {
        let mut m = sample_model();
        m.tensors = vec![bad];
        assert!(matches!(encode(&m), Err(FormatError::Invalid(_))));
    }
    let mut m = sample_model();
    m.tensors = vec![t(vec![65535, 0], MAX_CENTROIDS)];
    assert_same_bits(&m, &decode(&encode(&m).unwrap(), &Limits::default()).unwrap());
}

#[test]
fn malformed_tagged_bodies_are_refused() {
    let ok = |p: Vec<u8>| decode(&file_with(&p), &Limits::default());
    // f32 as f16: 2 values.
    let good =
        tens_payload(&[2], VT_F32, &[POS_DENSE], 2, BODY_TAGGED, &[C_F16, 0, 0x3C, 0, 0xC0]);
    assert_eq!(ok(good).unwrap().tensors[0].values, Values::F32(vec![1.0, -2.0]));
    // Codebook k = 2, f32 centroids, packed indices 0, 1, 1.
    let mut cb = vec![2, 0, 0, 0, C_PLAIN];
    cb.extend_from_slice(&1.5f32.to_le_bytes());
    cb.extend_from_slice(&(-1.0f32).to_le_bytes());
    let good = tens_payload(
        &[3],
        VT_CODEBOOK,
        &[POS_DENSE],
        3,
        BODY_TAGGED,
        &[&cb[..], &[C_PLAIN, 0b110]].concat(),
    );
    let back = ok(good).unwrap();
    assert_eq!(back.tensors[0].to_dense_f32(), vec![1.5, -1.0, -1.0]);
    for payload in [
        // Unknown tags, codebook without tagged body, index ≥ k, k too large,
        // nonzero padding, trailing bytes, short values, bad span.
        tens_payload(&[2], VT_F32, &[POS_DENSE], 2, BODY_TAGGED, &[C_HUFF, 0, 0, 0, 0]),
        tens_payload(&[2], VT_F32, &[POS_DENSE], 2, 3, &[0; 8]),
        tens_payload(
            &[3],
            VT_CODEBOOK,
            &[POS_DENSE],
            3,
            BODY_RAW,
            &[&cb[..], &[C_PLAIN, 0b110]].concat(),
        ),
        tens_payload(
            &[3],
            VT_CODEBOOK,
            &[POS_DENSE],
            3,
            BODY_TAGGED,
            &[&cb[..], &[C_F16, 0b110]].concat(),
        ),
        tens_payload(
            &[3],
            VT_CODEBOOK,
            &[POS_DENSE],
            3,
            BODY_TAGGED,
            &[&cb[..], &[C_PLAIN, 0b1110]].concat(),
        ),
        tens_payload(
            &[3],
            VT_CODEBOOK,
            &[POS_DENSE],
            3,
            BODY_TAGGED,
            &[&cb[..], &[C_PLAIN, 0b110, 0]].concat(),
        ),
        tens_payload(
            &[3],
            VT_CODEBOOK,
            &[POS_DENSE],
            3,
            BODY_TAGGED,
            &[&cb[..], &[C_PLAIN]].concat(),
        ),
        tens_payload(&[3], VT_CODEBOOK, &[POS_DENSE], 3, BODY_TAGGED, &[1, 0, 1, 0, C_PLAIN]),
        tens_payload(
            &[3],
            VT_CODEBOOK,
            &[POS_DENSE],
            3,
            BODY_TAGGED,
            &[0, 0, 0, 0, C_PLAIN, C_PLAIN, 0],
        ),
        tens_payload(&[3], VT_CODEBOOK, &[POS_DENSE], 3, BODY_TAGGED, &[0, 0, 0, 0, 9]),
        tens_payload(&[2], VT_F32, &[POS_HUFF_GAPS, 16], 1, BODY_TAGGED, &[0, C_F16, 0, 0]),
        tens_payload(
            &[2],
            VT_I8,
            &[POS_DENSE],
            2,
            BODY_TAGGED,
            &[&[0u8; 8][..], &[C_F16, 0, 0]].concat(),
        ),
    ] {
        assert!(ok(payload).is_err());
    }
    // A huge count from few bytes: every code word takes a bit, so decoding runs
    // out of input instead of allocating 2^32 values.
    let h = huffman::encode_stream(&[0; 8], 256).unwrap();
    let body = [&1f32.to_le_bytes()[..], &[C_HUFF], &h].concat();
    let huge = tens_payload(&[1, u32::MAX], VT_I8, &[POS_DENSE], u32::MAX, BODY_TAGGED, &body);
    assert!(ok(huge).unwrap_err().to_string().contains("values: bit stream ends"));
    let fine = tens_payload(&[1, 8], VT_I8, &[POS_DENSE], 8, BODY_TAGGED, &body);
    assert_eq!(
        ok(fine).unwrap().tensors[0].values,
        Values::I8 { q: vec![0; 8], scales: vec![1.0] }
    );
}

#[test]
fn new_encodings_survive_flips_truncations_and_mutations() {
    survives_flips_truncations_and_mutations(codebook_model(), 43);
}

/// Two hashed tensors (signed with f16 buckets, unsigned with f32 buckets) and
/// plain ones on the residual two-head graph.
fn hashed_model() -> SqzModel {
    let mut m = sample_model();
    let mut rng = Rng::new(8);
    m.tensors[0].values = Values::Hashed {
        buckets: (0..9).map(|_| f16_round(rng.uniform(1.0))).collect(),
        seed: 0x0123_4567_89AB_CDEF,
        signed: true,
        len: 64,
    };
    m.tensors[0].positions = None;
    let h1 = m.tensors.iter_mut().find(|t| t.name == "h1.weight").unwrap();
    h1.values = Values::Hashed { buckets: vec![0.1, -0.3, 0.7], seed: 5, signed: false, len: 24 };
    h1.positions = None;
    m
}

#[test]
fn hashed_tensors_round_trip_and_expand_by_the_hash() {
    let m = with_producer(hashed_model());
    let bytes = encode(&m).unwrap();
    assert_eq!(&bytes[4..8], &[1, 0, 1, 0], "a hashed tensor makes the file 1.1");
    assert_eq!(decode(&bytes, &Limits::default()).unwrap(), m);
    // Files without hashed tensors stay 1.0.
    assert_eq!(&encode(&sample_model()).unwrap()[4..8], &[1, 0, 0, 0]);
    let dense = m.tensors[0].to_dense_f32();
    let Values::Hashed { buckets, seed, .. } = &m.tensors[0].values else { unreachable!() };
    for (i, v) in dense.iter().enumerate() {
        let b = buckets[codec::hash::bucket(*seed, i as u64, 9) as usize];
        assert_eq!(*v, if codec::hash::negated(*seed, i as u64) { -b } else { b });
    }
    let (_, sums) = summaries(&m);
    let a = sums.iter().find(|s| s.tensor.as_deref() == Some("a.weight")).unwrap();
    assert_eq!(a.encoding, "hashed-signed-9 dense + c-f16");
    // 9 buckets in f16 + seed, flags, k, tag: no per-weight index.
    assert_eq!(a.value_bytes, 9 * 2 + 8 + 1 + 4 + 1);
    let h1 = sums.iter().find(|s| s.tensor.as_deref() == Some("h1.weight")).unwrap();
    assert_eq!(h1.encoding, "hashed-3 dense + c-f32");
}

#[test]
fn hashed_survives_flips_truncations_and_mutations() {
    survives_flips_truncations_and_mutations(hashed_model(), 44);
}

#[test]
fn malformed_hashed_tensors_are_refused() {
    let body = |seed: u64, flags: u8, k: u32, tag: u8, buckets: &[u8]| {
        let mut b = seed.to_le_bytes().to_vec();
        b.push(flags);
        b.extend_from_slice(&k.to_le_bytes());
        b.push(tag);
        b.extend_from_slice(buckets);
        b
    };
    let ok = tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 1, 2, 0, &[0; 8]));
    let d = decode(&file_with(&ok), &Limits::default()).unwrap();
    assert!(matches!(d.tensors[0].values, Values::Hashed { signed: true, len: 6, .. }));
    let err = |payload: Vec<u8>| decode(&file_with(&payload), &Limits::default()).unwrap_err().to_string();
    let cases = [
        (tens_payload(&[2, 3], 3, &[0], 6, 0, &body(7, 1, 2, 0, &[0; 8])), "body coding 2"),
        (tens_payload(&[2, 3], 3, &[1], 6, 2, &[0; 1]), "dense only"),
        (tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 1, 0, 0, &[])), "0 hash buckets"),
        (tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 1, 7, 0, &[0; 28])), "7 hash buckets for 6"),
        (tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 2, 2, 0, &[0; 8])), "unknown hash flags"),
        (tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 1, 2, 5, &[0; 8])), "unknown bucket coding 5"),
        (tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 1, 2, 0, &[0; 7])), "inside the buckets"),
        (tens_payload(&[2, 3], 3, &[0], 6, 2, &body(7, 1, 2, 0, &[0; 9])), "1 unused bytes"),
        (tens_payload(&[2, 3], 3, &[0], 6, 2, &[1, 2, 3]), "hash seed"),
    ];
    for (payload, want) in cases {
        let e = err(payload);
        assert!(e.contains(want) && e.contains("'w'"), "{e} should contain {want:?}");
    }
    // A few bytes may not stand for gigabytes of expanded weights.
    let bomb = tens_payload(&[65536, 65535], 3, &[0], u32::MAX - 65535 + 1 - 1, 2, &body(7, 0, 1, 0, &[0; 4]));
    let e = decode(&file_with(&bomb), &Limits::default()).unwrap_err();
    assert!(matches!(e, FormatError::LimitExceeded { .. }), "{e}");
    // The encoder refuses hashed values with positions or a wrong bucket count.
    let mut m = hashed_model();
    m.tensors[0].positions = Some((0..64).collect());
    assert!(encode(&m).unwrap_err().to_string().contains("dense only"));
    let mut m = hashed_model();
    m.tensors[0].values = Values::Hashed { buckets: vec![], seed: 1, signed: false, len: 64 };
    assert!(encode(&m).unwrap_err().to_string().contains("0 hash buckets"));
}

/// One int4 tensor (group 5, so the last group is partial and the last byte holds
/// one nibble when numel is odd) on the residual two-head graph.
fn int4_model() -> SqzModel {
    let mut m = sample_model();
    let mut rng = Rng::new(9);
    let n = m.tensors[0].numel();
    m.tensors[0].values = Values::I4 {
        q: (0..n).map(|_| rng.below(16) as i8 - 8).collect(),
        group: 5,
        scales: (0..n.div_ceil(5)).map(|_| f16_round(rng.uniform(1.0).abs() + 0.01)).collect(),
    };
    m.tensors[0].positions = None;
    m
}

#[test]
fn int4_tensors_round_trip_in_a_minor_2_file() {
    let m = with_producer(int4_model());
    let bytes = encode(&m).unwrap();
    assert_eq!(&bytes[4..8], &[1, 0, 2, 0], "an int4 tensor makes the file 1.2");
    assert_eq!(decode(&bytes, &Limits::default()).unwrap(), m);
    let Values::I4 { q, scales, .. } = &m.tensors[0].values else { unreachable!() };
    for (i, v) in m.tensors[0].to_dense_f32().iter().enumerate() {
        assert_eq!(*v, scales[i / 5] * f32::from(q[i]));
    }
    let (_, sums) = summaries(&m);
    let a = sums.iter().find(|s| s.tensor.as_deref() == Some(m.tensors[0].name.as_str())).unwrap();
    assert_eq!(a.encoding, "int4/g5 dense + s-f16");
    let n = m.tensors[0].numel();
    // group, two tags, f16 scales, half a byte per value.
    assert_eq!(a.value_bytes, 4 + 2 + 2 * n.div_ceil(5) + n.div_ceil(2));
}

#[test]
fn int4_survives_flips_truncations_and_mutations() {
    survives_flips_truncations_and_mutations(int4_model(), 45);
}

#[test]
fn malformed_int4_tensors_are_refused() {
    let body = |group: u32, stag: u8, scales: &[u8], vtag: u8, packed: &[u8]| {
        let mut b = group.to_le_bytes().to_vec();
        b.push(stag);
        b.extend_from_slice(scales);
        b.push(vtag);
        b.extend_from_slice(packed);
        b
    };
    // 6 elements in groups of 4: 2 f16 scales, 3 packed bytes.
    let ok = tens_payload(&[2, 3], 4, &[0], 6, 2, &body(4, 1, &[0; 4], 0, &[0xF7, 0x08, 0x10]));
    let d = decode(&file_with(&ok), &Limits::default()).unwrap();
    let Values::I4 { q, group: 4, .. } = &d.tensors[0].values else { panic!("{:?}", d.tensors[0].values) };
    assert_eq!(q, &vec![7, -1, -8, 0, 0, 1]);
    let err = |payload: Vec<u8>| decode(&file_with(&payload), &Limits::default()).unwrap_err().to_string();
    let cases = [
        (tens_payload(&[2, 3], 4, &[0], 6, 0, &body(4, 1, &[0; 4], 0, &[0; 3])), "body coding 2"),
        (tens_payload(&[2, 3], 4, &[1], 6, 2, &[0; 1]), "dense only"),
        (tens_payload(&[2, 3], 4, &[0], 6, 2, &body(0, 1, &[0; 4], 0, &[0; 3])), "int4 group 0"),
        (tens_payload(&[2, 3], 4, &[0], 6, 2, &body(4, 0, &[0; 4], 0, &[0; 3])), "must be f16"),
        (tens_payload(&[2, 3], 4, &[0], 6, 2, &[4, 0, 0, 0, 1, 0, 0, 0]), "inside the scales"),
        (tens_payload(&[2, 3], 4, &[0], 6, 2, &body(4, 1, &[0, 0x7C, 0, 0], 0, &[0; 3])), "not finite"),
        (tens_payload(&[2, 3], 4, &[0], 6, 2, &body(4, 1, &[0; 4], 2, &[0; 3])), "packed nibbles"),
        (tens_payload(&[2, 3], 4, &[0], 6, 2, &body(4, 1, &[0; 4], 0, &[0; 2])), "inside the values"),
        (tens_payload(&[2, 3], 4, &[0], 6, 2, &body(4, 1, &[0; 4], 0, &[0; 4])), "1 unused bytes"),
        (tens_payload(&[2, 3], 4, &[0], 6, 2, &[1, 2]), "int4 group"),
    ];
    for (payload, want) in cases {
        let e = err(payload);
        assert!(e.contains(want) && e.contains("'w'"), "{e} should contain {want:?}");
    }
    // The encoder refuses int4 values it could not store faithfully.
    let mut m = int4_model();
    m.tensors[0].positions = Some((0..m.tensors[0].numel() as u32).collect());
    assert!(encode(&m).unwrap_err().to_string().contains("dense only"));
    let mut m = int4_model();
    if let Values::I4 { q, .. } = &mut m.tensors[0].values {
        q[0] = 8;
    }
    assert!(encode(&m).unwrap_err().to_string().contains("outside -8..=7"));
    let mut m = int4_model();
    if let Values::I4 { scales, .. } = &mut m.tensors[0].values {
        scales[0] = 0.1;
    }
    assert!(encode(&m).unwrap_err().to_string().contains("not exact in f16"));
}

fn survives_flips_truncations_and_mutations(m: SqzModel, seed: u64) {
    let bytes = encode(&m).unwrap();
    let original = decode(&bytes, &Limits::default()).unwrap();
    for i in 0..bytes.len() {
        for x in [0x01u8, 0x80, 0xFF] {
            let mut b = bytes.clone();
            b[i] ^= x;
            if let Ok(d) = decode(&b, &fuzz_limits()) {
                assert!((6..8).contains(&i) && d == original, "flip at {i} accepted");
            }
        }
    }
    for n in 0..bytes.len() {
        assert!(decode(&bytes[..n], &fuzz_limits()).is_err(), "length {n}");
    }
    mutations_decode_or_fail_cleanly(&bytes, &mut Rng::new(seed), 3);
}

/// 20,000 copies of `valid` with 1 to `max_edits` random edits each (a byte replaced
/// or bit-flipped, a truncation, an insertion) are decoded as they are and again with
/// their checksums fixed (to reach the payload parsers): none panics, and whatever
/// decodes is a valid model that re-encodes byte-stably (bytes, not PartialEq, so that
/// NaN values compare). Some must decode, or the edits never got past the header.
fn mutations_decode_or_fail_cleanly(valid: &[u8], rng: &mut Rng, max_edits: usize) {
    let mut accepted = 0;
    for _ in 0..20000 {
        let mut b = valid.to_vec();
        crate::testing::mutate(&mut b, rng, max_edits);
        let _ = decode(&b, &fuzz_limits());
        fix_crcs(&mut b);
        if let Ok(m) = decode(&b, &fuzz_limits()) {
            assert!(summarize(&b, &fuzz_limits()).is_ok());
            m.tensors.iter().for_each(|t| assert_eq!(t.to_dense_f32().len(), t.numel()));
            let again = encode(&m).unwrap();
            let back = decode(&again, &fuzz_limits()).unwrap();
            assert_eq!(encode(&back).unwrap(), again);
            accepted += 1;
        }
    }
    assert!(accepted > 0, "mutations never reached a decodable file");
}

//! Times each op class of one DeiT block (and the embedding, head and whole anchor) in isolation on
//! the CPU backend (burn-flex), at DeiT-Ti/S/B widths and batch 1 and 8.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release --example profile_forward -- [--batch 1,8] [--models ti,s,b] [--min-ms 300] [--json]
//! ```
//!
//! Each op is run on the same inputs repeatedly (3 warm-up runs, then until `--min-ms` of timed runs
//! and at least 5); the median is printed, in ms. `tools/profile_ops.py` times the same ops in
//! PyTorch with the same names and, given `--snnet FILE` (this example's `--json` output), prints
//! both side by side. Rows:
//!
//! | op | what |
//! |----|------|
//! | `patch_embed.conv` | the 16×16/16 patch convolution |
//! | `embed.total` | conv + flatten + class token + position embedding (`Anchor::embed`) |
//! | `norm` | one LayerNorm over `[b, 197, C]` |
//! | `attn.qkv` | the qkv Linear `C → 3C` (as the anchor runs its Linears: `snnet::core::ops::linear_rows`, also for `attn.proj`, `mlp.fc1`, `mlp.fc2`) |
//! | `attn.split` | qkv → q, k, v `[b, h, n, d]` (reshape, permute, copy to contiguous) |
//! | `attn.qk` | `q @ kᵀ · scale` |
//! | `attn.softmax` | softmax over the last dim of `[b, h, n, n]` |
//! | `attn.av` | `attn @ v` |
//! | `attn.merge` | `[b, h, n, d] → [b, n, C]` |
//! | `attn.core` | split + qk + softmax + av + merge as the anchor runs it (`Attention::core`) |
//! | `attn.core_unfused` | the same, written as separate matmul / softmax / matmul ops |
//! | `attn.proj` | the output Linear `C → C` |
//! | `attn.total` | `Attention::forward` (qkv + core + proj) |
//! | `mlp.fc1` | Linear `C → 4C` |
//! | `mlp.gelu` | exact (erf) GELU over `[b, 197, 4C]` |
//! | `mlp.fc2` | Linear `4C → C` |
//! | `mlp.total` | `Mlp::forward` |
//! | `residual.add` | `x + y` over `[b, 197, C]` |
//! | `block.total` | `Block::forward` |
//! | `head` | class token → final norm → classifier |
//! | `forward.total` | the whole anchor (embed + 12 blocks + head) |
//! | `gemm.2d` | the qkv GEMM as one 2-D matmul `[b·n, C] × [C, 3C]` (no bias) |
//! | `gemm.fc1`, `gemm.fc1_wT`, `gemm.fc1_3d` | the fc1 GEMM (no bias): 2-D with the `[in, out]` weight, 2-D with an `[out, in]` weight transposed (view), 3-D with the weight broadcast |
//! | `attn.softmax_snnet`, `mlp.gelu_snnet` | the anchor's softmax and GELU (`Kernels::{softmax_scaled, gelu}` of `Flex`; on a shared input, so with one copy) |
//! | `kernel.softmax`, `kernel.gelu` | their CPU kernels alone, in place on a buffer |

use std::{hint::black_box, time::Instant};

use burn::{
    backend::Flex,
    tensor::{activation, module::attention, ops::AttentionModuleOptions, Distribution, Tensor},
};
use snnet::{
    core::kernels::{flex::cpu, Kernels},
    core::ops::linear_rows,
    Anchor, Features, VitConfig,
};

type B = Flex;

struct Opts {
    batches: Vec<usize>,
    models: Vec<String>,
    min_ms: f64,
    json: bool,
}

fn parse() -> Opts {
    let mut o = Opts { batches: vec![1, 8], models: vec!["ti".into(), "s".into(), "b".into()], min_ms: 300.0, json: false };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--batch" => o.batches = val().split(',').map(|s| s.trim().parse().expect("batch")).collect(),
            "--models" => o.models = val().split(',').map(|s| s.trim().to_lowercase()).collect(),
            "--min-ms" => o.min_ms = val().parse().expect("min-ms"),
            "--json" => o.json = true,
            "-h" | "--help" => {
                println!("profile_forward [--batch 1,8] [--models ti,s,b] [--min-ms 300] [--json]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

/// Median wall time of `f` in ms (3 warm-up runs, then at least 5 runs and `min_ms` in total).
fn time<T>(min_ms: f64, mut f: impl FnMut() -> T) -> (f64, usize) {
    for _ in 0..3 {
        black_box(f());
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 5 || (start.elapsed().as_secs_f64() * 1e3 < min_ms && samples.len() < 1000) {
        let t = Instant::now();
        black_box(f());
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (samples[samples.len() / 2], samples.len())
}

/// The original formulation: reshape + permute + narrow + reshape (three copies), merge copy.
fn core_v0(qkv: Tensor<B, 3>, h: usize) -> Tensor<B, 3> {
    let [b, n, c3] = qkv.dims();
    let (c, d) = (c3 / 3, c3 / 3 / h);
    let qkv = qkv.reshape([b, n, 3, h, d]).permute([2, 0, 3, 1, 4]);
    let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, h, n, d]);
    let (q, k, v) = (part(0), part(1), part(2));
    let attn = activation::softmax(q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5), 3);
    attn.matmul(v).swap_dims(1, 2).reshape([b, n, c])
}

/// q, k, v as strided views of qkv (no copies), merge copy at the end.
fn core_views(qkv: Tensor<B, 3>, h: usize) -> Tensor<B, 3> {
    let [b, n, c3] = qkv.dims();
    let (c, d) = (c3 / 3, c3 / 3 / h);
    let heads = qkv.reshape([b, n, 3 * h, d]).swap_dims(1, 2);
    let (q, k, v) = (heads.clone().narrow(1, 0, h), heads.clone().narrow(1, h, h), heads.narrow(1, 2 * h, h));
    let attn = activation::softmax(q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5), 3);
    attn.matmul(v).swap_dims(1, 2).reshape([b, n, c])
}

/// Views in, and the output computed transposed (`vᵀ pᵀ`), so that `[b, h, d, n]` is `[b, c, n]`
/// and the merged heads are a strided view: no copies at all.
fn core_t(qkv: Tensor<B, 3>, h: usize) -> Tensor<B, 3> {
    let [b, n, c3] = qkv.dims();
    let (c, d) = (c3 / 3, c3 / 3 / h);
    let heads = qkv.reshape([b, n, 3 * h, d]).swap_dims(1, 2);
    let (q, k, v) = (heads.clone().narrow(1, 0, h), heads.clone().narrow(1, h, h), heads.narrow(1, 2 * h, h));
    let attn = activation::softmax(q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5), 3);
    v.swap_dims(2, 3).matmul(attn.swap_dims(2, 3)).reshape([b, c, n]).swap_dims(1, 2)
}

/// The embedding with the patch convolution written as patchify (reshape + permute) and one GEMM.
fn embed_mm(vit: &snnet::Vit<B>, images: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, ch, hh, ww] = images.dims();
    let w = vit.patch_embed.proj.weight.val();
    let [c, _, p, _] = w.dims();
    let (gh, gw) = (hh / p, ww / p);
    let patches = images.reshape([b, ch, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b * gh * gw, ch * p * p]);
    let mut x = patches.matmul(w.reshape([c, ch * p * p]).transpose());
    if let Some(bias) = &vit.patch_embed.proj.bias {
        x = x + bias.val().unsqueeze::<2>();
    }
    let x = x.reshape([b, gh * gw, c]);
    let cls = vit.cls_token.val().expand([b as i64, 1, c as i64]);
    Tensor::cat(vec![cls, x], 1) + vit.pos_embed.val()
}

fn main() {
    let o = parse();
    snnet::backend::keep_freed_memory();
    let device: burn::tensor::Device<B> = Default::default();
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if !o.json {
        println!("burn-flex, f32, {threads} threads; median ms per op");
    }
    for m in &o.models {
        let (name, cfg) = match m.as_str() {
            "ti" => ("Ti", VitConfig::deit_tiny_patch16_224()),
            "s" => ("S", VitConfig::deit_small_patch16_224()),
            "b" => ("B", VitConfig::deit_base_patch16_224()),
            other => panic!("unknown model {other} (ti, s, b)"),
        };
        let vit = cfg.init::<B>(name, &device).expect("valid config");
        let blk = &vit.blocks[0];
        let (c, heads, n) = (cfg.embed_dim, cfg.num_heads, cfg.tokens());
        let d = c / heads;
        for &b in &o.batches {
            let mut rows: Vec<(&str, f64, usize)> = Vec::new();
            let mut rec = |op: &'static str, r: (f64, usize)| rows.push((op, r.0, r.1));
            let t = o.min_ms;
            let images = Tensor::<B, 4>::random([b, 3, cfg.img_size, cfg.img_size], Distribution::Normal(0.0, 1.0), &device);
            let x = Tensor::<B, 3>::random([b, n, c], Distribution::Normal(0.0, 1.0), &device);

            rec("patch_embed.conv", time(t, || vit.patch_embed.proj.forward(images.clone())));
            rec("embed.total", time(t, || vit.embed(images.clone())));
            rec("embed.patchify_mm", time(t, || embed_mm(&vit, images.clone())));
            rec("norm", time(t, || blk.norm1.forward(x.clone())));
            rec("attn.qkv", time(t, || linear_rows(&blk.attn.qkv, x.clone())));

            let qkv = blk.attn.qkv.forward(x.clone());
            let split = |qkv: Tensor<B, 3>| {
                let qkv = qkv.reshape([b, n, 3, heads, d]).permute([2, 0, 3, 1, 4]);
                let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, heads, n, d]);
                (part(0), part(1), part(2))
            };
            rec("attn.split", time(t, || split(qkv.clone())));
            let (q, k, v) = split(qkv.clone());
            let scale = (d as f64).powf(-0.5);
            rec("attn.qk", time(t, || q.clone().matmul(k.clone().swap_dims(2, 3)) * scale));
            let s = q.clone().matmul(k.clone().swap_dims(2, 3)) * scale;
            rec("attn.softmax", time(t, || activation::softmax(s.clone(), 3)));
            rec("attn.softmax_snnet", time(t, || Flex::softmax_scaled(s.clone(), 1.0)));
            let mut sbuf = s.clone().into_data().to_vec::<f32>().unwrap();
            rec("kernel.softmax", time(t, || cpu::softmax_rows(&mut sbuf, n, 1.0)));
            let p = activation::softmax(s.clone(), 3);
            rec("attn.av", time(t, || p.clone().matmul(v.clone())));
            let o4 = p.clone().matmul(v.clone());
            rec("attn.merge", time(t, || o4.clone().swap_dims(1, 2).reshape([b, n, c])));
            rec("attn.core", time(t, || blk.attn.core(qkv.clone())));
            rec(
                "attn.core_unfused",
                time(t, || {
                    let (q, k, v) = split(qkv.clone());
                    let p = activation::softmax(q.matmul(k.swap_dims(2, 3)) * scale, 3);
                    p.matmul(v).swap_dims(1, 2).reshape([b, n, c])
                }),
            );
            rec(
                "attn.fused_sdpa",
                time(t, || {
                    let (q, k, v) = split(qkv.clone());
                    attention(q, k, v, None, None, AttentionModuleOptions::default()).swap_dims(1, 2).reshape([b, n, c])
                }),
            );
            rec("attn.core_views", time(t, || core_views(qkv.clone(), heads)));
            rec("attn.core_t", time(t, || core_t(qkv.clone(), heads)));
            rec("attn.total_v0", time(t, || blk.attn.proj.forward(core_v0(blk.attn.qkv.forward(x.clone()), heads))));
            rec("attn.total_views", time(t, || blk.attn.proj.forward(core_views(blk.attn.qkv.forward(x.clone()), heads))));
            rec("attn.total_t", time(t, || blk.attn.proj.forward(core_t(blk.attn.qkv.forward(x.clone()), heads))));
            let merged = blk.attn.core(qkv.clone());
            rec("attn.proj", time(t, || linear_rows(&blk.attn.proj, merged.clone())));
            rec("attn.total", time(t, || blk.attn.forward(x.clone())));

            rec("mlp.fc1", time(t, || linear_rows(&blk.mlp.fc1, x.clone())));
            rec("mlp.fc1_2d", time(t, || blk.mlp.fc1.forward(x.clone().reshape([b * n, c])).reshape([b, n, 4 * c])));
            let h = blk.mlp.fc1.forward(x.clone());
            rec("mlp.gelu", time(t, || activation::gelu(h.clone())));
            rec("mlp.fc1+gelu", time(t, || activation::gelu(blk.mlp.fc1.forward(x.clone()))));
            rec("mlp.gelu_snnet", time(t, || Flex::exact_gelu(h.clone())));
            let mut hbuf = h.clone().into_data().to_vec::<f32>().unwrap();
            rec("kernel.gelu", time(t, || cpu::gelu(&mut hbuf)));
            let g = activation::gelu(h.clone());
            rec("mlp.fc2", time(t, || linear_rows(&blk.mlp.fc2, g.clone())));
            rec("mlp.total", time(t, || blk.mlp.forward(x.clone())));
            let y = blk.mlp.forward(x.clone());
            rec("residual.add", time(t, || x.clone() + y.clone()));
            rec("block.total", time(t, || blk.forward(x.clone())));
            rec("head", time(t, || vit.head(Features::Tokens(x.clone()), true)));
            rec("forward.total", time(t, || vit.forward(images.clone())));

            let x2 = x.clone().reshape([b * n, c]);
            let w = blk.attn.qkv.weight.val();
            rec("gemm.2d", time(t, || x2.clone().matmul(w.clone())));
            let w1 = blk.mlp.fc1.weight.val();
            let w1t = Tensor::<B, 2>::from_data(w1.clone().transpose().into_data(), &device);
            rec("gemm.fc1", time(t, || x2.clone().matmul(w1.clone())));
            rec("gemm.fc1_wT", time(t, || x2.clone().matmul(w1t.clone().transpose())));
            let x3 = x.clone();
            let w13 = w1.clone().unsqueeze::<3>();
            rec("gemm.fc1_3d", time(t, || x3.clone().matmul(w13.clone())));

            let depth = cfg.depth as f64;
            if o.json {
                for (op, ms, reps) in &rows {
                    println!(
                        "{{\"impl\":\"snnet\",\"model\":\"{name}\",\"batch\":{b},\"threads\":{threads},\"op\":\"{op}\",\"ms\":{ms:.4},\"repeats\":{reps}}}"
                    );
                }
            } else {
                println!("\n== DeiT-{name} (C={c}, heads={heads}, N={n}), batch {b} ==");
                let block_ms = rows.iter().find(|r| r.0 == "block.total").map(|r| r.1).unwrap_or(f64::NAN);
                for (op, ms, reps) in &rows {
                    println!("{op:>20} {ms:>10.3} ms  ({reps} runs)");
                }
                println!("{:>20} {:>10.3} ms  (12 × block.total)", "12 blocks", block_ms * depth);
            }
        }
    }
}

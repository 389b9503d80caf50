//! Random valid training-form graphs, built from the fuzzer's bytes by a small
//! interpreter over the zoo builder: every fusion must be exact (checked on the CPU
//! reference) and must not mutate its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use repfuse::zoo::{blocks, ConvSpec, GraphBuilder};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let c = 1 + (data[0] % 6) as usize;
    let hw = [1 + (data[1] % 9) as usize, 1 + (data[2] % 9) as usize];
    let mut b = GraphBuilder::new(data[3] as u64);
    let x = b.input("x", &[1 + (data[3] % 2) as usize, c, hw[0], hw[1]]);
    let mut live = vec![x];
    for op in data[4..].chunks(3).take(12) {
        let [code, p, q] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0)];
        let t = live[p as usize % live.len()].clone();
        let ch = b.channels(&t);
        let shape = repfuse::graph::infer_shapes(&b.graph).unwrap()[&t].clone();
        let k = [1, 3, 5][q as usize % 3];
        let fits = shape.len() == 4 && shape[2] + 2 * (k / 2) >= k && shape[3] + 2 * (k / 2) >= k;
        let y = match code % 9 {
            0 if fits => b.conv_bn(&t, ConvSpec::same(1 + (q as usize % 6), k, 1, 1)),
            1 if fits => blocks::repvgg_block(&mut b, &t, ch, 1, 1),
            2 if fits && ch % 2 == 0 => blocks::repvgg_block(&mut b, &t, ch, 1, 2),
            3 if fits && shape[2] >= 3 && shape[3] >= 3 => blocks::acnet_block(&mut b, &t, 1 + q as usize % 5, 3, 1),
            4 if fits && shape[2] >= 3 && shape[3] >= 3 => blocks::dbb_block(&mut b, &t, 1 + q as usize % 5, 3, 1),
            5 if fits => blocks::mobileone_block(&mut b, &t, ch, k, 1, ch, 1 + q as usize % 3),
            6 => b.bn(&t),
            7 if shape.len() == 4 => {
                let other = live.iter().find(|o| **o != t && repfuse::graph::infer_shapes(&b.graph).unwrap()[*o] == shape).cloned();
                match other {
                    Some(o) => b.add(&[t, o]),
                    None => b.relu(&t),
                }
            }
            _ => b.relu(&t),
        };
        live.push(y);
    }
    let out = live.last().unwrap().clone();
    b.output(&out);
    let (g, w) = b.finish();
    let before = g.clone();
    let f = repfuse::fuse(&g, &Default::default()).expect("a valid graph fuses");
    assert_eq!(g, before, "fuse mutated its input");
    let fw = f.weights_cpu(&w).expect("weights of a valid graph compute");
    let e = repfuse::verify::check_equivalence(&g, &w, &f.graph, &fw, 1).unwrap();
    assert!(e.passed(), "inexact fusion: {:?}", e);
});

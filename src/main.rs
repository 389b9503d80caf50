fn main() {
    let name = std::env::args().nth(1).unwrap_or("repvgg_a0".into());
    let size: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(64);
    let (g, w, m) = repfuse::zoo::build(&name, 1, size, 1).unwrap();
    let t = std::time::Instant::now();
    let f = repfuse::fuse(&g, &Default::default()).unwrap();
    let t1 = t.elapsed();
    let fw = f.weights_cpu(&w).unwrap();
    let t2 = t.elapsed();
    println!("{} expected {} convs; before {:?}\nafter {:?}\nrefused {:?}\nrewrite {:?} plan {:?}", m.name, m.deploy_convs, f.report.ops_before, f.report.ops_after, f.report.refused, t1, t2 - t1);
    let e = repfuse::verify::check_equivalence(&g, &w, &f.graph, &fw, 7).unwrap();
    println!("max_abs {:e} max_rel {:e} passed {} ({:?})", e.max_abs(), e.max_rel(), e.passed(), t.elapsed());
}

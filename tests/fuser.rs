//! The embedding API: one `Fuser` shared by threads fusing different models.

use repfuse::{Backend, FuseOptions, Fuser};

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn one_fuser_serves_many_threads() {
    assert_send_sync::<Fuser>();
    let fuser = Fuser::new(Backend::Cpu);
    std::thread::scope(|s| {
        let handles: Vec<_> = ["acnet", "dbb", "repvgg_a0", "mobileone_s0"]
            .into_iter()
            .map(|m| {
                let fuser = &fuser;
                s.spawn(move || {
                    let (g, w, z) = repfuse::zoo::build(m, 1, 32, 3).unwrap();
                    let fused = fuser.fuse(&g, &w, &FuseOptions::default()).unwrap();
                    assert_eq!(fused.graph.count("Conv"), z.deploy_convs, "{}", m);
                    let e = repfuse::verify::check_equivalence(&g, &w, &fused.graph, &fused.weights, 1).unwrap();
                    assert!(e.passed(), "{}: {:?}", m, e);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

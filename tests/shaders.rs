//! Every WGSL kernel parses and validates with naga, and the layouts the Rust side
//! writes (uniform params structs, job record strides) match what the WGSL reads.
//! No GPU needed.

use repfuse::gpu::{self, shaders};

fn module(name: &str) -> naga::Module {
    let src = shaders::ALL.iter().find(|(n, _)| *n == name).unwrap().1;
    shaders::validate(name, src).unwrap_or_else(|e| panic!("{}", e))
}

#[test]
fn every_shader_parses_and_validates() {
    assert!(shaders::ALL.len() >= 8);
    for (name, src) in shaders::ALL {
        if let Err(e) = shaders::validate(name, src) {
            panic!("{}", e);
        }
    }
}

#[test]
fn every_kernel_id_names_one_listed_shader() {
    use shaders::KernelId;
    assert_eq!(KernelId::ALL.len(), shaders::ALL.len(), "a shader without a KernelId, or the reverse");
    for id in KernelId::ALL {
        let listed = shaders::ALL.iter().find(|(n, _)| *n == id.name()).unwrap_or_else(|| panic!("{:?} is not in shaders::ALL", id));
        assert_eq!(listed.1, id.source(), "{:?}: a different source than shaders::ALL lists", id);
    }
}

#[test]
fn a_broken_shader_is_reported_with_its_name() {
    let err = shaders::validate("broken", "fn main( {").unwrap_err().to_string();
    assert!(err.contains("broken"), "{}", err);
}

/// Size of the WGSL struct `Params` in `name`, as naga lays it out.
fn wgsl_params_size(name: &str) -> u32 {
    let m = module(name);
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(m.to_ctx()).unwrap();
    let (handle, _) = m.types.iter().find(|(_, t)| t.name.as_deref() == Some("Params")).unwrap_or_else(|| panic!("{} has no Params struct", name));
    layouter[handle].size
}

#[test]
fn uniform_params_have_the_same_size_in_wgsl_and_rust() {
    assert_eq!(wgsl_params_size("conv2d") as usize, std::mem::size_of::<gpu::ConvParams>());
    assert_eq!(wgsl_params_size("conv2d_tiled") as usize, std::mem::size_of::<gpu::ConvParams>());
    assert_eq!(wgsl_params_size("elementwise") as usize, std::mem::size_of::<gpu::ElementwiseParams>());
    assert_eq!(wgsl_params_size("pool") as usize, std::mem::size_of::<gpu::PoolParams>());
    assert_eq!(wgsl_params_size("linear") as usize, std::mem::size_of::<gpu::LinearParams>());
}

/// Value of a `const NAME: u32` in a shader.
fn wgsl_const(name: &str, constant: &str) -> usize {
    let m = module(name);
    let (_, c) = m.constants.iter().find(|(_, c)| c.name.as_deref() == Some(constant)).unwrap_or_else(|| panic!("{} has no const {}", name, constant));
    match m.global_expressions[c.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => v as usize,
        ref e => panic!("{}::{} is not a u32 literal: {:?}", name, constant, e),
    }
}

#[test]
fn job_record_strides_match_the_shaders() {
    assert_eq!(wgsl_const("fold_bn", "STRIDE"), gpu::FOLD_BN_STRIDE);
    assert_eq!(wgsl_const("fill", "STRIDE"), gpu::FILL_STRIDE);
    assert_eq!(wgsl_const("place", "STRIDE"), gpu::PLACE_STRIDE);
    assert_eq!(wgsl_const("place", "SRC_STRIDE"), gpu::PLACE_SRC_STRIDE);
    assert_eq!(wgsl_const("compose", "STRIDE"), gpu::COMPOSE_STRIDE);
}

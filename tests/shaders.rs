//! Every WGSL kernel parses and validates with naga, and the layouts the Rust side
//! writes (uniform params structs, job record strides) match what the WGSL reads.
//! No GPU needed.

use repfuse::gpu::records::{ComposeJob, FillJob, FoldBnJob, GpuRecord, PlaceJob, PlaceSourceJob};
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

/// (member name, byte offset) of WGSL struct `st` in shader `name`, and its size, as
/// naga lays it out.
fn wgsl_struct(name: &str, st: &str) -> (Vec<(String, usize)>, usize) {
    let m = module(name);
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(m.to_ctx()).unwrap();
    let (handle, ty) = m.types.iter().find(|(_, t)| t.name.as_deref() == Some(st)).unwrap_or_else(|| panic!("{} has no struct {}", name, st));
    let naga::TypeInner::Struct { members, span } = &ty.inner else { panic!("{}::{} is not a struct", name, st) };
    assert_eq!(*span, layouter[handle].size, "{}::{}", name, st);
    (members.iter().map(|mb| (mb.name.clone().unwrap_or_default(), mb.offset as usize)).collect(), *span as usize)
}

/// Every field of job record `J` has the name and offset of the WGSL struct's member
/// in the same position, and the sizes agree (so an array of them has one stride).
fn assert_record_layout<J: GpuRecord>(shader: &str) {
    let (wgsl, size) = wgsl_struct(shader, J::WGSL_NAME);
    let rust: Vec<(String, usize)> = J::fields().into_iter().map(|(n, o)| (n.to_string(), o)).collect();
    assert_eq!(rust, wgsl, "{}: Rust fields (left) differ from the WGSL struct in {}.wgsl (right)", J::WGSL_NAME, shader);
    assert_eq!(std::mem::size_of::<J>(), size, "{}: size", J::WGSL_NAME);
}

#[test]
fn uniform_params_match_the_wgsl_structs_field_by_field() {
    assert_record_layout::<gpu::ConvParams>("conv2d");
    assert_record_layout::<gpu::ConvParams>("conv2d_tiled");
    assert_record_layout::<gpu::ElementwiseParams>("elementwise");
    assert_record_layout::<gpu::PoolParams>("pool");
    assert_record_layout::<gpu::LinearParams>("linear");
}

#[test]
fn job_records_match_the_wgsl_structs_field_by_field() {
    assert_record_layout::<FoldBnJob>("fold_bn");
    assert_record_layout::<FillJob>("fill");
    assert_record_layout::<PlaceJob>("place");
    assert_record_layout::<PlaceSourceJob>("place");
    assert_record_layout::<ComposeJob>("compose");
}

#[test]
fn a_job_record_out_of_step_with_its_shader_is_caught() {
    // The check itself can fail: fold_bn's struct read as fill's.
    let (wgsl, _) = wgsl_struct("fold_bn", "FoldBnJob");
    let rust: Vec<(String, usize)> = FillJob::fields().into_iter().map(|(n, o)| (n.to_string(), o)).collect();
    assert_ne!(rust, wgsl);
}

//! Builds training-form graphs with seeded random weights and random, non-identity BN
//! statistics, so a wrong fold shows up as a large error instead of hiding behind
//! gamma=1, beta=0, mean=0, var=1.

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::graph::{Activation, AvgPool2d, BatchNorm, Conv2d, Graph, Linear, Node, Op, ValueInfo};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Geometry of one conv to add.
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    /// Output channels.
    pub out: usize,
    /// Kernel size `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride, both axes.
    pub stride: usize,
    /// Padding `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// Dilation, both axes.
    pub dilation: usize,
    /// Group count; must divide the input and output channels.
    pub groups: usize,
    /// Give the conv a random bias.
    pub bias: bool,
}

impl ConvSpec {
    /// A KxK conv with PyTorch's "same" padding `(k-1)/2 * dilation` per side.
    pub fn same(out: usize, k: usize, stride: usize, groups: usize) -> Self {
        ConvSpec { out, kernel: [k, k], stride, pads: [k / 2; 4], dilation: 1, groups, bias: false }
    }
    /// A `kh x kw` conv (e.g. the 1x3/3x1 branches of ACNet), padded `k/2` per side.
    pub fn kernel_hw(out: usize, kh: usize, kw: usize, stride: usize) -> Self {
        ConvSpec { out, kernel: [kh, kw], stride, pads: [kh / 2, kw / 2, kh / 2, kw / 2], dilation: 1, groups: 1, bias: false }
    }
    /// The same padding `p` on all four sides.
    pub fn pad(mut self, p: usize) -> Self {
        self.pads = [p; 4];
        self
    }
    /// Dilation `d`, with padding reset to keep the output size ("same").
    pub fn dilated(mut self, d: usize) -> Self {
        self.dilation = d;
        self.pads = [(self.kernel[0] / 2) * d, (self.kernel[1] / 2) * d, (self.kernel[0] / 2) * d, (self.kernel[1] / 2) * d];
        self
    }
    /// Adds a bias to the conv.
    pub fn with_bias(mut self) -> Self {
        self.bias = true;
        self
    }
}

/// Appends nodes to a graph with seeded random parameters; each method returns the output tensor's name.
pub struct GraphBuilder {
    /// The graph built so far.
    pub graph: Graph,
    /// Random parameters for every tensor the graph names.
    pub weights: Weights,
    rng: StdRng,
    count: usize,
    /// Every tensor's shape, kept node by node (inferring the whole graph per query
    /// made building a chain quadratic).
    shapes: crate::graph::Shapes,
}

impl GraphBuilder {
    /// An empty graph; `seed` makes the weights reproducible.
    pub fn new(seed: u64) -> Self {
        GraphBuilder { graph: Graph::default(), weights: Weights::new(), rng: StdRng::seed_from_u64(seed), count: 0, shapes: Default::default() }
    }

    /// Declares a graph input of full `shape` (batch first); returns `name`.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> String {
        self.graph.inputs.push(ValueInfo { name: name.to_string(), shape: shape.to_vec() });
        self.shapes.insert(name.to_string(), shape.to_vec());
        name.to_string()
    }

    /// Marks tensor `t` as a graph output.
    pub fn output(&mut self, t: &str) {
        self.graph.outputs.push(t.to_string());
    }

    fn name(&mut self, kind: &str) -> String {
        self.count += 1;
        format!("{}{}", kind, self.count)
    }

    fn param(&mut self, name: String, shape: Vec<usize>, lo: f32, hi: f32) -> String {
        let n = shape.iter().product();
        let data = (0..n).map(|_| self.rng.random_range(lo..hi)).collect();
        self.graph.params.insert(name.clone(), shape.clone());
        self.weights.insert(name.clone(), Tensor::from_parts(shape, data));
        name
    }

    fn node(&mut self, name: String, op: Op, inputs: Vec<String>) -> String {
        let out = format!("{}.out", name);
        let node = Node { name, op, inputs, outputs: vec![out.clone()] };
        // Lenient: tests build invalid graphs on purpose; only `channels` needs a shape.
        if let Ok(Some(s)) = crate::graph::infer_node(&self.graph, &node, &self.shapes) {
            self.shapes.insert(out.clone(), s);
        }
        self.graph.nodes.push(node);
        out
    }

    /// A node of any op on `inputs`, named `<kind><n>` (its parameters added first
    /// with `tensor`): how tests build ops the builder has no method for.
    pub fn op(&mut self, kind: &str, op: Op, inputs: &[String]) -> String {
        let name = self.name(kind);
        self.node(name, op, inputs.to_vec())
    }

    /// A parameter tensor with the given values; returns its name.
    pub fn tensor(&mut self, name: &str, shape: &[usize], data: Vec<f32>) -> String {
        self.graph.params.insert(name.to_string(), shape.to_vec());
        self.weights.insert(name.to_string(), Tensor::from_parts(shape.to_vec(), data));
        name.to_string()
    }

    /// Channel count of a tensor built so far.
    pub fn channels(&self, t: &str) -> usize {
        self.shapes.get(t).unwrap_or_else(|| panic!("builder: `{}` has no known shape", t))[1]
    }

    /// A conv on `x` with uniform He-style random weights.
    pub fn conv(&mut self, x: &str, s: ConvSpec) -> String {
        let cin = self.channels(x);
        let name = self.name("conv");
        let fan_in = (cin / s.groups) * s.kernel[0] * s.kernel[1];
        let b = (3.0 / fan_in as f32).sqrt();
        let weight = self.param(format!("{}.weight", name), vec![s.out, cin / s.groups, s.kernel[0], s.kernel[1]], -b, b);
        let bias = s.bias.then(|| self.param(format!("{}.bias", name), vec![s.out], -0.2, 0.2));
        let op = Op::Conv2d(Conv2d {
            weight,
            bias,
            in_channels: cin,
            out_channels: s.out,
            kernel: s.kernel,
            stride: [s.stride; 2],
            pads: s.pads,
            dilation: [s.dilation; 2],
            groups: s.groups,
        });
        self.node(name, op, vec![x.to_string()])
    }

    /// A batch norm on `x` with random, non-identity statistics.
    pub fn bn(&mut self, x: &str) -> String {
        let c = self.channels(x);
        let name = self.name("bn");
        // gamma in [0.25, 0.75]: far from identity, yet sums of several branches keep
        // deep random networks at O(1) activations.
        let gamma = self.param(format!("{}.weight", name), vec![c], 0.25, 0.75);
        let beta = self.param(format!("{}.bias", name), vec![c], -0.5, 0.5);
        let mean = self.param(format!("{}.running_mean", name), vec![c], -0.5, 0.5);
        let var = self.param(format!("{}.running_var", name), vec![c], 0.5, 2.0);
        self.node(name, Op::BatchNorm(BatchNorm { gamma, beta, mean, var, eps: 1e-5, channels: c, written_as: None }), vec![x.to_string()])
    }

    /// A conv followed by a batch norm, the unit of every training-form branch.
    pub fn conv_bn(&mut self, x: &str, s: ConvSpec) -> String {
        let y = self.conv(x, s);
        self.bn(&y)
    }

    /// A Linear on `x` (`[N, F]`) to `out` features.
    pub fn linear(&mut self, x: &str, out: usize, bias: bool) -> String {
        let cin = crate::graph::infer_shapes(&self.graph).expect("valid")[x][1];
        let name = self.name("fc");
        let b = (3.0 / cin as f32).sqrt();
        let weight = self.param(format!("{}.weight", name), vec![out, cin], -b, b);
        let bias = bias.then(|| self.param(format!("{}.bias", name), vec![out], -0.2, 0.2));
        self.node(name, Op::Linear(Linear { weight, bias, in_features: cin, out_features: out }), vec![x.to_string()])
    }

    /// One `Add` of all `xs` (same shapes).
    pub fn add(&mut self, xs: &[String]) -> String {
        let name = self.name("add");
        self.node(name, Op::Add, xs.to_vec())
    }

    /// Left-nested binary adds, as PyTorch exports `a + b + c`.
    pub fn add_chain(&mut self, xs: &[String]) -> String {
        let mut acc = xs[0].clone();
        for x in &xs[1..] {
            acc = self.add(&[acc, x.clone()]);
        }
        acc
    }

    /// Concatenation of `xs` on the channel axis.
    pub fn concat(&mut self, xs: &[String]) -> String {
        let name = self.name("concat");
        self.node(name, Op::Concat, xs.to_vec())
    }

    /// Activation `a` on `x`.
    pub fn act(&mut self, x: &str, a: Activation) -> String {
        let name = self.name("act");
        self.node(name, Op::Activation(a), vec![x.to_string()])
    }

    /// ReLU on `x`.
    pub fn relu(&mut self, x: &str) -> String {
        self.act(x, Activation::Relu)
    }

    /// A `k x k` average pool with `pad` on every side.
    pub fn avg_pool(&mut self, x: &str, k: usize, stride: usize, pad: usize, count_include_pad: bool) -> String {
        let name = self.name("avgpool");
        self.node(
            name,
            Op::AvgPool2d(AvgPool2d { kernel: [k, k], stride: [stride; 2], pads: [pad; 4], count_include_pad, ceil_mode: false }),
            vec![x.to_string()],
        )
    }

    /// Global average pool, NCHW -> NC11.
    pub fn global_pool(&mut self, x: &str) -> String {
        let name = self.name("gap");
        self.node(name, Op::GlobalAvgPool, vec![x.to_string()])
    }

    /// Flatten to `[N, C*H*W]`.
    pub fn flatten(&mut self, x: &str) -> String {
        let name = self.name("flatten");
        self.node(name, Op::Flatten, vec![x.to_string()])
    }

    /// An unmodelled op of type `op_type`, passed through fusion untouched.
    pub fn opaque(&mut self, x: &str, op_type: &str) -> String {
        let name = self.name("opaque");
        self.node(name, Op::Opaque(crate::graph::Opaque { op_type: op_type.to_string(), payload: vec![], shape_hint: None, why: None }), vec![x.to_string()])
    }

    /// The finished graph and its weights.
    pub fn finish(self) -> (Graph, Weights) {
        (self.graph, self.weights)
    }
}

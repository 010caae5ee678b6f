import Testing
@testable import WSAMergeKit

@Suite("Merge plans")
struct MergePlanTests {
    @Test("an input's gaps cover its missing slices' layers, and the tensors before or after the layers when the first or last slice gives it no model")
    func gaps() {
        let middle = InputGaps(layers: [2..<4])
        #expect(middle.covers("model.layers.2.mlp.up_proj.weight") && middle.covers("model.layers.3.self_attn.q_proj.weight"))
        #expect(!middle.covers("model.layers.1.mlp.up_proj.weight") && !middle.covers("model.layers.4.mlp.up_proj.weight"))
        #expect(!middle.covers("model.embed_tokens.weight") && !middle.covers("lm_head.weight"))
        let ends = InputGaps(layers: [0..<2], beforeLayers: true, afterLayers: false)
        #expect(ends.covers("model.embed_tokens.weight") && ends.covers("model.layers.0.input_layernorm.weight"))
        #expect(!ends.covers("lm_head.weight") && !ends.covers("model.norm.weight"))
        #expect(InputGaps(afterLayers: true).covers("model.norm.weight"))
    }
}

import Testing
@testable import WSAMergeKit

/// Text for people: numbers, byte sizes, aligned columns, layer indexes, name filters.
@Suite struct TableTests {
    @Test func formatsNumbers() {
        #expect(formatNumber(nil) == "-")
        #expect(formatNumber(0) == "0")
        #expect(formatNumber(0.0201) == "0.02010")  // four significant digits
        #expect(formatNumber(-1.5) == "-1.500")
        #expect(formatNumber(3.4e-05) == "3.40e-05")
        #expect(formatNumber(1.23e6) == "1.23e+06")
        #expect(formatNumber(9.999e-4) == "1.00e-03")
        // NaN and the infinities are null in the JSON, so "-" in a table
        #expect(formatNumber(.nan) == "-" && formatNumber(-.infinity) == "-" && formatNumber(.infinity) == "-")
        // subnormals: 10^e is inexact there
        #expect(formatNumber(9.99e-321) == "9.99e-321" && formatNumber(1e-320) == "1.00e-320")
        #expect(formatNumber(5e-324) == "4.94e-324" && formatNumber(-2.5e-310) == "-2.50e-310")
        // a value that rounds up to the next decade keeps four significant digits
        #expect(formatNumber(0.99996) == "1.000" && formatNumber(-0.99996) == "-1.000" && formatNumber(9.99996) == "10.00")
    }

    @Test func formatsBytes() {
        #expect(formatBytes(999) == "999 B")
        #expect(formatBytes(1000) == "1.00 kB")
        #expect(formatBytes(1_500_000) == "1.50 MB")
        #expect(formatBytes(25_000_000_000) == "25.0 GB")
    }

    @Test func alignsColumns() {
        var table = Table(headers: ["name", "n"], numericColumns: [1])
        table.add(["a", "1"])
        table.add(["longer", "12345"])
        #expect(table.text == "name        n\na           1\nlonger  12345\n")
    }

    @Test func shortensLongNamesInTheMiddle() {
        let name = String(repeating: "a", count: 40) + String(repeating: "b", count: 40)
        let short = shortenMiddle(name)
        #expect(short.count == Table.maxNameWidth && short.hasPrefix("aaaa") && short.hasSuffix("bbbb") && short.contains("…"))
        #expect(shortenMiddle("short") == "short")
    }

    @Test func findsLayerIndexes() {
        #expect(LayerGroups.layerIndex(of: "model.layers.12.mlp.up_proj.weight") == 12)
        #expect(LayerGroups.layerIndex(of: "transformer.h.3.attn.c_attn.weight") == 3)
        #expect(LayerGroups.layerIndex(of: "blocks.0.norm.weight") == 0)
        #expect(LayerGroups.layerIndex(of: "encoder.layer.7.output.dense.bias") == 7)
        #expect(LayerGroups.layerIndex(of: "model.embed_tokens.weight") == nil)
        #expect(LayerGroups.layerIndex(of: "model.layers.x.weight") == nil)
        #expect(LayerGroups.layerIndex(of: "model.layers") == nil)
        #expect(LayerGroups.layerIndex(of: "h.-1.weight") == nil)
        // npz keys written from TensorFlow-style names, and the families of both spellings
        #expect(LayerGroups.layerIndex(of: "encoder/layers/4/kernel") == 4)
        #expect(LayerGroups.layerIndex(of: "model/layer_4/kernel") == nil)
        #expect(LayerGroups.family(of: "encoder/layers/4/kernel")! == ("encoder/layers/*/kernel", 4))
        #expect(LayerGroups.family(of: "model.layers.12.mlp.up_proj.weight")! == ("model.layers.*.mlp.up_proj.weight", 12))
        #expect(LayerGroups.family(of: "model.norm.weight") == nil)
    }

    @Test func renamesLayersAndPlacesTheRest() {
        #expect(LayerGroups.renaming("model.layers.12.mlp.up_proj.weight", layer: 3) == "model.layers.3.mlp.up_proj.weight")
        #expect(LayerGroups.renaming("transformer.h.0.attn.weight", layer: 7) == "transformer.h.7.attn.weight")
        #expect(LayerGroups.renaming("model.norm.weight", layer: 1) == "model.norm.weight")
        #expect(LayerGroups.renaming("encoder/layers/4/kernel", layer: 2) == "encoder/layers/2/kernel")
        // Pre- and post-weights of mergekit 0.1.5's architectures (llama, gpt2, gpt-neox, bloom,
        // chatglm, mamba, t5, phi, bert).
        let before = ["model.embed_tokens.weight", "transformer.wte.weight", "transformer.wpe.weight", "gpt_neox.embed_in.weight",
                      "transformer.word_embeddings_layernorm.weight", "transformer.embedding.word_embeddings.weight",
                      "backbone.embeddings.weight", "shared.weight", "transformer.rotary_pos_emb.inv_freq", "bert.embeddings.position_ids"]
        let after = ["model.norm.weight", "lm_head.weight", "transformer.ln_f.bias", "gpt_neox.final_layer_norm.weight", "embed_out.weight",
                     "transformer.output_layer.weight", "backbone.norm_f.weight", "model.final_layernorm.weight", "score.weight",
                     "bert.pooler.dense.weight", "cls.predictions.bias", "pre_classifier.weight"]
        #expect(before.filter { !LayerGroups.precedesTheLayers($0) } == [])
        #expect(after.filter { LayerGroups.precedesTheLayers($0) } == [])
    }

    @Test func filtersNamesLikeReSearch() throws {
        let filter = try TensorFilter(include: ["layers\\.[01]\\.", "^lm_head"], exclude: ["bias$"])
        #expect(filter.selects("model.layers.0.mlp.weight"))
        #expect(!filter.selects("model.layers.0.mlp.bias"))
        #expect(!filter.selects("model.layers.2.mlp.weight"))
        #expect(filter.selects("lm_head.weight") && !filter.selects("x.lm_head.weight"))
        #expect(TensorFilter.all.selects("anything"))
        #expect(throws: WSAMergeError.usage("--include '(' is not a valid regular expression")) { try TensorFilter(include: ["("], exclude: []) }
    }
}

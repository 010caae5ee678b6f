import Foundation
import Testing
@testable import WSAMergeKit

@Suite("LoRA adapters")
struct LoraAdapterTests {
    /// A config in a temporary adapter directory.
    static func config(_ json: String) throws -> LoraAdapter.Config {
        let dir = NSTemporaryDirectory() + "wsamerge-lora-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try json.write(toFile: dir + "/adapter_config.json", atomically: true, encoding: .utf8)
        return try LoraAdapter.Config(directory: dir)
    }

    @Test("patterns match as PEFT's re.match(r\"(.*\\.)?(pattern)$\"): a whole trailing name, the first pattern that matches")
    func patterns() throws {
        let config = try Self.config(#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "alpha_pattern": {"o_proj": 3, "layers\\.1\\..*": 5, "self_attn.o_proj": 7}}"#)
        #expect(try config.value(in: config.alphaPattern, for: "model.layers.0.self_attn.o_proj") == 3)
        #expect(try config.value(in: config.alphaPattern, for: "model.layers.1.self_attn.o_proj") == 3)
        #expect(try config.value(in: config.alphaPattern, for: "model.layers.1.mlp.up_proj") == 5)
        #expect(try config.value(in: config.alphaPattern, for: "model.layers.0.self_attn.xo_proj") == nil)
        #expect(try config.value(in: config.alphaPattern, for: "o_proj") == 3)
        #expect(try config.value(in: config.alphaPattern, for: "model.layers.0.o_proj.lora") == nil)
        #expect(config.r == 8 && config.alpha == 16 && !config.rsLoRA && !config.fanInFanOut)
    }

    @Test("a config that is not a plain LoRA's is refused, naming the key")
    func refusals() throws {
        for (json, text) in [(#"{"r": 8}"#, "no peft_type"), (#"{"peft_type": "LOHA"}"#, "LOHA adapter"),
                             (#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": true}"#, "DoRA"),
                             (#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_parameters": ["experts.w1"]}"#, "'target_parameters'"),
                             (#"{"peft_type": "LORA", "r": 0, "lora_alpha": 8}"#, "'r' must be"),
                             (#"{"peft_type": "LORA", "r": 4, "lora_alpha": "8"}"#, "'lora_alpha' must be"),
                             (#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "rank_pattern": {"q": 0}}"#, "rank_pattern 'q'")] {
            #expect { try Self.config(json) } throws: { error in
                guard case WSAMergeError.malformed(_, _, let reason) = error else { return false }
                return reason.contains(text)
            }
        }
        let ok = try Self.config(#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_parameters": null, "layer_replication": null, "use_rslora": true}"#)
        #expect(ok.rsLoRA)
    }

    @Test("model+adapter splits where the model exists and the adapter is a directory, only when the whole does not exist")
    func split() throws {
        let dir = NSTemporaryDirectory() + "wsamerge-split-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for sub in ["m", "a", "m+x", "c+d"] { try FileManager.default.createDirectory(atPath: dir + "/" + sub, withIntermediateDirectories: true) }
        #expect(LoraAdapter.split(dir + "/m+" + dir + "/a")! == (dir + "/m", dir + "/a"))
        #expect(LoraAdapter.split(dir + "/m+x+" + dir + "/a")! == (dir + "/m+x", dir + "/a"))
        #expect(LoraAdapter.split(dir + "/c+d") == nil)
        #expect(LoraAdapter.split(dir + "/m+" + dir + "/missing") == nil)
        #expect(LoraAdapter.model(of: dir + "/m+" + dir + "/a") == dir + "/m")
        #expect(LoraAdapter.model(of: "plain") == "plain")
    }
}

import Testing
@testable import WSAMergeKit

@Suite struct ParametersTests {
    static let declaration = StrategyDeclaration(
        identifier: "toy", summary: "", base: .required,
        parameters: [
            ParameterDeclaration("weight", .number, .perInput, default: nil, help: ""),
            ParameterDeclaration("density", .number, .perInput, default: .number(1), help: ""),
            ParameterDeclaration("normalize", .bool, .shared, default: .bool(true), help: ""),
            ParameterDeclaration("mode", .choice(["a", "b"]), .shared, default: .string("a"), help: ""),
            ParameterDeclaration("steps", .integer, .shared, default: .number(10), help: ""),
        ])
    static let names = ["model.embed.weight", "model.layers.0.w", "model.layers.1.w", "model.layers.2.w", "model.norm.weight"]

    func resolve(_ settings: ParameterSettings, inputs: Int = 2) throws -> ResolvedParameters {
        try ResolvedParameters(Self.declaration, settings: settings, inputCount: inputs, tensorNames: Self.names)
    }

    @Test func defaultsSharedAndPerInputPrecedence() throws {
        var settings = ParameterSettings()
        try settings.assign("weight", words: ["0.3", "0.7"], for: Self.declaration)
        try settings.assign("density", words: ["0.5"], for: Self.declaration)
        settings.set("density", perInput: [nil, .value(.number(0.2))])
        let p = try resolve(settings)
        #expect(try p.numbers("weight", tensor: "x") == [0.3, 0.7])
        // Input 1's own value wins over the merge-wide one; input 0 takes the merge-wide one.
        #expect(try p.numbers("density", tensor: "x") == [0.5, 0.2])
        #expect(try p.bool("normalize", tensor: "x") == true)
        #expect(try p.string("mode", tensor: "x") == "a")
    }

    /// On the command line a later assignment replaces an earlier one, also a single value after
    /// a per-input list (`--weights 1,2 --param weight=0`), and a list after a single value.
    @Test func laterAssignmentsReplaceEarlierOnes() throws {
        var settings = ParameterSettings()
        try settings.assign("weight", words: ["1", "2"], for: Self.declaration)
        try settings.assign("weight", words: ["0"], for: Self.declaration)
        try settings.assign("density", words: ["0.3"], for: Self.declaration)
        try settings.assign("density", words: ["0.4", "0.6"], for: Self.declaration)
        let p = try resolve(settings)
        #expect(try p.numbers("weight", tensor: "x") == [0, 0])
        #expect(try p.numbers("density", tensor: "x") == [0.4, 0.6])
    }

    @Test func gradientFollowsTheLayers() throws {
        var settings = ParameterSettings()
        settings.set("weight", .gradient([0, 1]))
        settings.set("density", .gradient([0.2, 0.6, 1.0]))
        let p = try resolve(settings)
        // Three layers: t = 0, 0.5, 1; tensors outside the layers take t = 0.
        #expect(try p.number("weight", input: 0, tensor: "model.layers.1.w") == 0.5)
        #expect(try p.number("weight", input: 1, tensor: "model.layers.2.w") == 1)
        #expect(try p.number("weight", input: 0, tensor: "model.embed.weight") == 0)
        // t = 0.5 over [0.2, 0.6, 1.0]: x = 1, i = 1, f = 0.
        #expect(try p.number("density", input: 0, tensor: "model.layers.1.w") == 0.6)
        let quarter = ParameterSetting.gradient([0.2, 0.6, 1.0]).value(at: TensorPosition(name: "", t: 0.25))
        #expect(abs(quarter!.number! - 0.4) < 1e-15)
    }

    @Test func firstMatchingFilterWinsAndFallback() throws {
        var settings = ParameterSettings()
        settings.set("weight", .filtered([FilteredSetting(filter: "self_attn", setting: .value(.number(0.1))),
                                          FilteredSetting(filter: "mlp", setting: .gradient([0, 1])),
                                          FilteredSetting(filter: nil, setting: .value(.number(0.5)))]))
        let p = try resolve(settings)
        #expect(try p.number("weight", input: 0, tensor: "model.layers.0.self_attn.q") == 0.1)
        #expect(try p.number("weight", input: 0, tensor: "model.layers.2.mlp.up") == 1)
        #expect(try p.number("weight", input: 0, tensor: "model.embed.weight") == 0.5)
    }

    @Test("a filter '*' matches every tensor, as in mergekit")
    func starFilterMatchesAll() throws {
        var settings = ParameterSettings()
        settings.set("density", .filtered([FilteredSetting(filter: "*", setting: .value(.number(0.25))),
                                           FilteredSetting(filter: nil, setting: .value(.number(0.5)))]))
        let p = try resolve(settings)
        #expect(try p.number("density", input: 0, tensor: "model.embed.weight") == 0.25)
        #expect(try p.number("density", input: 1, tensor: "model.layers.0.w") == 0.25)
        // '*' is not a wildcard inside a longer filter: "layers.*" is a plain substring.
        settings.set("density", .filtered([FilteredSetting(filter: "layers.*", setting: .value(.number(0.25)))]))
        #expect(try resolve(settings).number("density", input: 0, tensor: "model.layers.0.w") == 1)
    }

    @Test("a parameter without its default (a recipe's linear weight) refuses a tensor no filter matches")
    func withoutDefault() throws {
        var settings = ParameterSettings()
        settings.set("density", perInput: [.filtered([FilteredSetting(filter: "layers", setting: .value(.number(0.5)))]), .value(.number(0.2))])
        #expect(try resolve(settings).number("density", input: 0, tensor: "model.embed.weight") == 1)
        settings.withoutDefault.insert("density")
        let p = try resolve(settings)
        #expect(try p.number("density", input: 0, tensor: "model.layers.1.w") == 0.5)
        let missing = #expect(throws: WSAMergeError.self) { try p.number("density", input: 0, tensor: "model.embed.weight") }
        #expect(missing?.description.contains("toy needs parameter 'density' for input 1 (tensor 'model.embed.weight')") == true)
    }

    @Test func mistakesNameTheMethodAndParameter() throws {
        var settings = ParameterSettings()
        let unknown = #expect(throws: WSAMergeError.self) { try settings.assign("nonsense", words: ["1"], for: Self.declaration) }
        #expect(unknown?.description == "toy has no parameter 'nonsense' (its parameters: weight, density, normalize, mode, steps)")
        let shared = #expect(throws: WSAMergeError.self) { try settings.assign("normalize", words: ["true", "false"], for: Self.declaration) }
        #expect(shared?.description.contains("shared by all inputs") == true)
        for (name, word) in [("normalize", "maybe"), ("mode", "c"), ("steps", "1.5"), ("density", "high")] {
            var bad = ParameterSettings()
            try bad.assign(name, words: [word], for: Self.declaration)
            let error = #expect(throws: WSAMergeError.self) { try resolve(bad) }
            #expect(error?.exitCode == 64 && error?.description.contains("'\(name)' expects") == true, "\(name)")
        }
        var counts = ParameterSettings()
        try counts.assign("weight", words: ["1", "2", "3"], for: Self.declaration)
        #expect(throws: WSAMergeError.self) { try resolve(counts) }
        let missing = #expect(throws: WSAMergeError.self) { try resolve(ParameterSettings()).number("weight", input: 1, tensor: "model.norm.weight") }
        #expect(missing == .hinted(.usage("toy needs parameter 'weight' for input 2 (tensor 'model.norm.weight')"), .parameter("weight")))
    }
}

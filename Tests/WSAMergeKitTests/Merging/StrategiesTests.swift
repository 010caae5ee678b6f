import Testing
@testable import WSAMergeKit

@Suite struct StrategiesTests {
    @Test func registryHasUniqueNames() {
        let names = Strategies.names
        #expect(Set(names).count == names.count)
        #expect(Strategies.named("linear")?.declaration.identifier == "average")
        #expect(Strategies.named("wsa") != nil && Strategies.named("nope") == nil)
    }

    @Test func everyDeclarationIsConsistent() {
        for strategy in Strategies.all {
            let d = strategy.declaration
            #expect(Set(d.parameters.map(\.name)).count == d.parameters.count, "\(d.identifier)")
            for p in d.parameters {
                if let value = p.defaultValue { #expect(p.check(value) != nil, "\(d.identifier).\(p.name) default") }
            }
            #expect(d.inputs.lowerBound >= (d.base == .required ? 0 : 1), "\(d.identifier)")
        }
    }

    @Test func jsonListsTypeScopeAndDefault() throws {
        let fisher = try #require(Strategies.named("fisher")).declaration.json
        let parameters = try #require(fisher["parameters"]?.arrayValue)
        let epsilon = try #require(parameters.first { $0["name"]?.stringValue == "fisher_epsilon" })
        #expect(epsilon["type"]?.stringValue == "number" && epsilon["scope"]?.stringValue == "shared")
        #expect(epsilon["default"]?.doubleValue == 1e-6 && epsilon["required"] == .bool(false))
        #expect(fisher["files"]?.arrayValue?.first?["name"]?.stringValue == "fisher")
    }
}

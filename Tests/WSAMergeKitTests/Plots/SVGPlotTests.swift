import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
@testable import WSAMergeKit

/// An SVG document's elements in document order (name, attributes, the classes of their open
/// ancestors), parsed with `XMLParser`.
struct SVGElements {
    struct Element {
        let name: String
        let attributes: [String: String]
        let ancestors: [String]
    }

    let elements: [Element]

    init(_ text: String) throws {
        final class Delegate: NSObject, XMLParserDelegate {
            var elements: [Element] = []
            var stack: [String] = []
            func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                        attributes: [String: String] = [:]) {
                elements.append(Element(name: name, attributes: attributes, ancestors: stack))
                stack.append(attributes["class"] ?? name)
            }
            func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
                stack.removeLast()
            }
        }
        let parser = XMLParser(data: Data(text.utf8))
        let delegate = Delegate()
        parser.delegate = delegate
        guard parser.parse() else {
            throw NSError(domain: "SVG", code: 1, userInfo: [NSLocalizedDescriptionKey: "not XML: \(String(describing: parser.parserError))"])
        }
        elements = delegate.elements
    }

    /// The panels, each with its elements.
    var panels: [(title: String, elements: [Element])] {
        var out: [(String, [Element])] = []
        for e in elements {
            if e.name == "g" && e.attributes["class"] == "panel" {
                out.append((e.attributes["data-title"] ?? "", []))
            } else if e.ancestors.contains("panel"), !out.isEmpty {
                out[out.count - 1].1.append(e)
            }
        }
        return out
    }

    /// Coordinate pairs in a path's `d`.
    static func points(_ d: String) -> Int {
        d.split(whereSeparator: { $0 == "M" || $0 == "L" }).filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }.count
    }

    /// The document without its numbers: element names and non-numeric attributes, plus every
    /// path's point count, in order (what a structural comparison compares).
    var structure: [String] {
        elements.map { e in
            let attributes = e.attributes.keys.sorted().compactMap { key -> String? in
                let value = e.attributes[key]!
                if key == "d" { return "d:\(Self.points(value))" }
                if Double(value) != nil || ["transform", "viewBox", "width", "height"].contains(key) { return nil }
                return "\(key)=\(value)"
            }
            return ([e.name] + attributes).joined(separator: " ")
        }
    }
}

@Suite struct SVGPlotTests {
    static func plot() -> Plot {
        Figures.byLayer(title: "Test <plot> & co", yLabel: "std", labels: ["a.safetensors", "b.safetensors", "c.npz"], rows: [
            .init(name: "model.layers.0.mlp.weight", values: [0.02, 0.03, 0.025], target: 0.025),
            .init(name: "model.layers.1.mlp.weight", values: [0.021, nil, 0.026], target: 0.024),
            .init(name: "model.layers.2.mlp.weight", values: [0.022, 0.031, 0.027], target: 0.026),
            .init(name: "model.layers.0.attn.weight", values: [0.01, 0.011, 0.012], target: 0.011),
            .init(name: "model.embed.weight", values: [0.5, 0.6, 0.7], target: 0.6),
            .init(name: "lm_head.weight", values: [0.1, 0.2, nil], target: 0.15),
        ])
    }

    @Test func panelsHoldOneLinePerModelAndTheDashedTarget() throws {
        let svg = try SVGElements(Self.plot().svg)
        let panels = svg.panels
        #expect(panels.map(\.title) == ["model.layers.*.mlp.weight", "model.layers.*.attn.weight", "tensors outside the layers"])
        // mlp: three layers, model b lacks layer 1 (a gap: two runs, two points).
        let mlp = panels[0].elements
        let paths = mlp.filter { $0.name == "path" }
        #expect(paths.map { $0.attributes["class"] } == ["series", "series", "series", "target"])
        #expect(paths.map { SVGElements.points($0.attributes["d"] ?? "") } == [3, 2, 3, 3])
        #expect(paths[1].attributes["d"]?.filter { $0 == "M" }.count == 2)
        #expect(paths.map { $0.attributes["data-label"] } == ["a.safetensors", "b.safetensors", "c.npz", "target"])
        #expect(paths[3].attributes["stroke-dasharray"] != nil && paths[0].attributes["stroke-dasharray"] == nil)
        #expect(Set(paths.prefix(3).compactMap { $0.attributes["stroke"] }).count == 3)
        #expect(panels[1].elements.filter { $0.name == "path" }.map { SVGElements.points($0.attributes["d"] ?? "") } == [1, 1, 1, 1])
        // Tensors outside the layers: points, one group per model, one marker per value.
        let outside = panels[2].elements
        let groups = outside.filter { $0.name == "g" }
        #expect(groups.map { $0.attributes["class"] } == ["series", "series", "series", "target"])
        #expect(outside.filter { $0.name == "line" && $0.ancestors.last == "target" }.count == 2)
        let markers = outside.filter { $0.name == "circle" }
        #expect(markers.count == 5)
        #expect(outside.filter { $0.name == "text" }.contains { $0.attributes["transform"]?.hasPrefix("rotate(-30") == true })
    }

    @Test func documentIsSelfContained() throws {
        let text = Self.plot().svg
        _ = try SVGElements(text)
        #expect(text.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        for forbidden in ["<script", "href", "url(", "@import", "<foreignObject", "<image", "http://www.w3.org/1999/xlink"] {
            #expect(!text.contains(forbidden), "\(forbidden)")
        }
        #expect(text.contains("Test &lt;plot&gt; &amp; co"))
        #expect(text.contains(#"font-family="sans-serif""#))
    }

    @Test func ticksAreRoundNumbers() {
        let t = Ticks(0.0153, 0.0271)
        #expect(t.step == 0.002 || t.step == 0.005)
        #expect(t.low <= 0.0153 && t.high >= 0.0271)
        #expect(t.values.map { t.label($0) }.allSatisfy { !$0.contains("e") && $0.count <= 6 })
        #expect(Ticks.niceStep(0.0031) == 0.005)
        #expect(Ticks.niceStep(7) == 10)
        #expect(Ticks(5, 5).values.count >= 2)
        #expect(num(-0.001) == "0" && num(12.5) == "12.5" && num(3) == "3")
    }

    /// The README's example, `docs/images/scope-plot.svg`, is what `scope --plot` draws for the
    /// merge fixtures: compared element by element, numbers aside.
    @Test func goldenScopePlot() throws {
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { root.deleteLastPathComponent() }
        let fixtures = root.path + "/fixtures/merge/"
        let checkpoints = try CheckpointReader.open(["a.safetensors", "b.safetensors", "c.npz"].map { fixtures + $0 })
        let comparison = try ScopeComparison(checkpoints, weights: [1.0 / 3, 1.0 / 3, 1.0 / 3], fusion: .linear, filter: .all, jobs: 2)
        let drawn = try SVGElements(Figures.scope(comparison).svg)
        let golden = try SVGElements(String(contentsOfFile: root.path + "/docs/images/scope-plot.svg", encoding: .utf8))
        #expect(drawn.structure == golden.structure)
        #expect(drawn.panels.map(\.title) == ["model.layers.*.attn.weight", "model.layers.*.mlp.weight",
                                              "model.layers.*.norm.weight", "tensors outside the layers"])
    }
}

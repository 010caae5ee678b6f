import Foundation
import Testing
@testable import WSAMergeKit

@Suite("Chat templates")
struct ChatTemplateTests {
    static let template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    static let encoded = #""{% for m in messages %}{{ m['content'] }}\n{% endfor %}""#

    @Test("tokenizer_config.json gets the template in place of its old one, every other byte kept")
    func replacesTheOldTemplate() throws {
        let old = """
            {
              "add_bos_token": true,
              "chat_template": "{{ 'old, with \\"quotes\\" and } braces' }}",
              "model_max_length": 1000000000000000019884624838656,
              "added_tokens_decoder": {"0": {"content": "<unk>", "special": true}}
            }

            """
        let new = try ChatTemplate.tokenizerConfig(old, template: Self.template, file: "t.json")
        #expect(new == old.replacingOccurrences(of: #""{{ 'old, with \"quotes\" and } braces' }}""#, with: Self.encoded))
        #expect(try JSON.parse(new)["chat_template"]?.stringValue == Self.template)
        // A list of named templates (and a value of any other kind) is replaced whole.
        let listed = #"{"chat_template": [{"name": "default", "template": "a"}, {"name": "tool_use", "template": "b"}], "x": null}"#
        #expect(try ChatTemplate.tokenizerConfig(listed, template: Self.template, file: "t.json") == #"{"chat_template": "# + Self.encoded + #", "x": null}"#)
        for value in ["null", "12", "true", "{\"a\": [1, {\"b\": \"]\"}]}"] {
            #expect(try ChatTemplate.tokenizerConfig("{\"chat_template\":\(value)}", template: "t", file: "t.json") == #"{"chat_template":"t"}"#)
        }
        // Only the top-level key: a nested one is left alone.
        let nested = #"{"processor": {"chat_template": "keep"}}"#
        #expect(try ChatTemplate.tokenizerConfig(nested, template: "t", file: "t.json") == #"{"processor": {"chat_template": "keep"}, "chat_template": "t"}"#)
    }

    @Test("a config without one gets the key after its last member, indented like the first")
    func addsTheKey() throws {
        #expect(try ChatTemplate.tokenizerConfig("{\n    \"a\": 1,\n    \"b\": [2]\n}\n", template: "t", file: "t.json")
                == "{\n    \"a\": 1,\n    \"b\": [2],\n    \"chat_template\": \"t\"\n}\n")
        #expect(try ChatTemplate.tokenizerConfig(#"{"a":"x"}"#, template: "t", file: "t.json") == #"{"a":"x", "chat_template": "t"}"#)
        #expect(try ChatTemplate.tokenizerConfig(" { } ", template: "t", file: "t.json") == #" { "chat_template": "t"} "#)
        // Escaped key spellings are the same key.
        #expect(try ChatTemplate.tokenizerConfig(#"{"chat\u005ftemplate": "x"}"#, template: "t", file: "t.json") == #"{"chat\u005ftemplate": "t"}"#)
        // Control characters and non-ASCII text are written as JSON reads them back.
        let text = "é\t\u{1}{{ x }}"
        #expect(try JSON.parse(try ChatTemplate.tokenizerConfig("{}", template: text, file: "t.json"))["chat_template"]?.stringValue == text)
    }

    @Test("a tokenizer_config.json that is not a JSON object is refused")
    func refusesWhatIsNotAnObject() {
        for text in ["[1]", "\"x\""] {
            expectMalformed("t.json", "not a JSON object") { _ = try ChatTemplate.tokenizerConfig(text, template: "t", file: "t.json") }
        }
        // Invalid JSON says why (wsamerge's reader is strict: a repeated key is refused too).
        for (text, why) in [("{\"a\": }", "not valid JSON ("), ("", "not valid JSON ("), (#"{"a": 1, "a": 2}"#, "duplicate")] {
            expectMalformed("t.json", why) { _ = try ChatTemplate.tokenizerConfig(text, template: "t", file: "t.json") }
        }
    }

    @Test("names, auto and whole templates resolve as mergekit's do")
    func resolves() throws {
        for (name, template) in ChatTemplate.named {
            #expect(try ChatTemplate.resolve(name, models: []) == template)
            #expect(template.contains("messages"))
        }
        #expect(try ChatTemplate.resolve(Self.template, models: []) == Self.template)
        // 20 code points, as Python counts them (here 15 characters).
        let combining = "{{ m }}" + String(repeating: "e\u{301}", count: 8)
        #expect(combining.count == 15)
        #expect(try ChatTemplate.resolve(combining, models: []) == combining)
        for bad in ["ChatML", "{{ short }}", "a plain sentence without braces at all"] {
            #expect(throws: WSAMergeError.self) { try ChatTemplate.resolve(bad, models: []) }
        }
    }

    @Test("auto takes the template most models have, the first of them on a tie, none when none has one")
    func auto() throws {
        let root = NSTemporaryDirectory() + "wsamerge-unit-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: root) }
        func model(_ name: String, config: String? = nil, jinja: String? = nil) throws -> String {
            let dir = root + "/" + name
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            if let config { try config.write(toFile: dir + "/tokenizer_config.json", atomically: true, encoding: .utf8) }
            if let jinja { try jinja.write(toFile: dir + "/chat_template.jinja", atomically: true, encoding: .utf8) }
            return dir
        }
        let a = try model("a", config: #"{"chat_template": "A "}"#)
        let b = try model("b", config: #"{"chat_template": "B"}"#, jinja: "\n B\r\nb\n")  // the .jinja file first, trimmed, read in text mode
        let c = try model("c", config: #"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "B\nb"}]}"#)
        let none = try model("none", config: #"{"chat_template": "  "}"#)
        let broken = try model("broken", config: "{")
        let file = root + "/w.safetensors"
        try Data([1]).write(to: URL(fileURLWithPath: file))
        #expect(try ChatTemplate.resolve("auto", models: [a, b, c]) == "B\nb")
        #expect(try ChatTemplate.resolve("auto", models: [a, b, none, broken, file]) == "A")
        #expect(try ChatTemplate.resolve("auto", models: [b, a]) == "B\nb")
        #expect(try ChatTemplate.resolve("auto", models: [none, broken, file, root + "/missing"]) == nil)
    }
}

/// The chat template a merged model directory gets (mergekit's recipe key `chat_template`):
/// `auto` (the template most of the merged models have), one of the formats by name (`chatml`,
/// `llama3`, `mistral`, `alpaca`, `exaone`), or a Jinja template given whole. It is written into
/// the copied `tokenizer_config.json` (key `chat_template`, the rest of the text as it was) and
/// into `chat_template.jinja`, which newer transformers read first.
public enum ChatTemplate {
    /// The file newer transformers save a tokenizer's template in, and read it from first.
    static let fileName = "chat_template.jinja"
    /// The folder of a tokenizer's other named templates (transformers 5).
    static let additionalFolder = "additional_chat_templates"

    /// The formats by name, as wsamerge writes them (Jinja for transformers' `apply_chat_template`,
    /// which renders with `trim_blocks` and `lstrip_blocks`).
    public static let named: [(name: String, template: String)] = [
        // <|im_start|>role\ncontent<|im_end|>\n per message.
        ("chatml", """
            {%- for message in messages -%}
            {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}
            {%- endfor -%}
            {%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
            """),
        // bos, then <|start_header_id|>role<|end_header_id|>\n\n(content, trimmed)<|eot_id|> per message.
        ("llama3", """
            {%- if bos_token -%}{{- bos_token -}}{%- endif -%}
            {%- for message in messages -%}
            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' -}}
            {%- endfor -%}
            {%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}
            """),
        // bos, then " [INST] user [/INST]" and " assistant</s>" alternating; a leading system
        // message goes before the first user message, separated by a blank line.
        ("mistral", """
            {%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none -%}
            {%- set turns = messages[1:] if system is not none else messages -%}
            {%- if bos_token -%}{{- bos_token -}}{%- endif -%}
            {%- for message in turns -%}
            {%- if message['role'] not in ['user', 'assistant'] -%}
            {{- raise_exception('mistral: only user and assistant messages after an optional first system message') -}}
            {%- elif (message['role'] == 'user') != (loop.index0 is even) -%}
            {{- raise_exception('mistral: user and assistant messages must alternate, starting with user') -}}
            {%- elif message['role'] == 'user' and loop.first and system is not none -%}
            {{- ' [INST] ' + system + '\\n\\n' + message['content'] + ' [/INST]' -}}
            {%- elif message['role'] == 'user' -%}
            {{- ' [INST] ' + message['content'] + ' [/INST]' -}}
            {%- else -%}
            {{- ' ' + message['content'] + (eos_token if eos_token else '') -}}
            {%- endif -%}
            {%- endfor -%}
            """),
        // The last system message, then "### Instruction:", "### Input:" (role user_context) and
        // "### Response:" sections, each trimmed, separated by blank lines.
        ("alpaca", """
            {%- set systems = messages | selectattr('role', 'equalto', 'system') | list -%}
            {%- set ns = namespace(text=(systems | last)['content'] | trim if systems else '') -%}
            {%- set headings = {'user': 'Instruction', 'user_context': 'Input', 'assistant': 'Response'} -%}
            {%- for message in messages if message['role'] in headings -%}
            {%- set ns.text = ns.text + ('\\n\\n' if ns.text else '') + '### ' + headings[message['role']] + ':\\n' + message['content'] | trim -%}
            {%- endfor -%}
            {%- if add_generation_prompt and (not messages or messages[-1]['role'] != 'assistant') -%}
            {%- set ns.text = ns.text + ('\\n\\n' if ns.text else '') + '### Response:\\n' -%}
            {%- endif -%}
            {{- ns.text -}}
            """),
        // [|role|]content, then \n after a user message and [|endofturn|]\n after the others;
        // an empty system turn first when the conversation has none.
        ("exaone", """
            {%- for message in messages -%}
            {%- if loop.first and message['role'] != 'system' -%}{{- '[|system|][|endofturn|]\\n' -}}{%- endif -%}
            {{- '[|' + message['role'] + '|]' + message['content'] + ('\\n' if message['role'] == 'user' else '[|endofturn|]\\n') -}}
            {%- endfor -%}
            {%- if add_generation_prompt -%}{{- '[|assistant|]' -}}{%- endif -%}
            """),
    ]

    /// The template a recipe's `chat_template` asks for. `auto`: the template most of `models`
    /// (model directories; other paths are skipped) have, the first of them on a tie (mergekit
    /// counts them in a set's order), nil when none has one (the copied files are kept as they
    /// are). A name of `named`: that template. Otherwise a Jinja template itself, which must be
    /// at least 20 characters (code points) and contain `{` (as mergekit checks).
    public static func resolve(_ setting: String, models: [String]) throws -> String? {
        if setting == "auto" {
            var counts: [String: Int] = [:]
            var order: [String] = []
            for model in models {
                guard let template = template(ofModel: LoraAdapter.model(of: model)) else { continue }
                if counts[template] == nil { order.append(template) }
                counts[template, default: 0] += 1
            }
            guard let most = counts.values.max() else { return nil }
            return order.first { counts[$0] == most }
        }
        if let known = named.first(where: { $0.name == setting }) { return known.template }
        guard setting.unicodeScalars.count >= 20, setting.contains("{") else {
            throw WSAMergeError.usage("'\(setting)' is neither auto, a template name (\(named.map(\.name).joined(separator: ", "))) nor a Jinja template")
        }
        return setting
    }

    /// Refuses a setting that is neither `auto`, a name of `named`, nor a Jinja template.
    public static func validate(_ setting: String) throws {
        _ = try resolve(setting, models: [])
    }

    /// A model directory's own chat template, trimmed: its `chat_template.jinja`, else
    /// `tokenizer_config.json`'s `chat_template` (a string, or the one named `default` of a list).
    static func template(ofModel directory: String) -> String? {
        guard pathKind(directory) == .directory else { return nil }
        func text(_ name: String) -> String? {
            guard pathKind(directory + "/" + name) == .file, let file = try? ReadableFile(path: directory + "/" + name),
                  let bytes = try? file.readBytes(at: 0, count: file.size) else { return nil }
            return String(decoding: bytes, as: UTF8.self)
        }
        // Read as transformers reads it, in text mode: \r\n and \r are line breaks.
        var found = text(fileName)?.replacingAll("\r\n", with: "\n").replacingAll("\r", with: "\n")
        if found == nil, let config = text("tokenizer_config.json"), let json = try? JSON.parse(config), let value = json["chat_template"] {
            found = value.stringValue ?? value.arrayValue?.first { $0["name"]?.stringValue == "default" }?["template"]?.stringValue
        }
        guard let found else { return nil }
        let trimmed = found.trimmingWhitespace
        return trimmed.isEmpty ? nil : trimmed
    }

    /// `tokenizer_config.json`'s text with its top-level `chat_template` set to `template`: the
    /// old value replaced where there is one, else the key added after the last member; every
    /// other byte kept. `file` names the file in errors.
    static func tokenizerConfig(_ text: String, template: String, file: String) throws -> String {
        let bytes = Array(text.utf8)
        let parsed: JSON
        do { parsed = try JSON.parse(text) } catch let error as JSONParseError {
            throw WSAMergeError.malformed(file: file, reason: "not valid JSON (\(error)), so the chat template cannot be set in it")
        }
        guard case .object = parsed else {
            throw WSAMergeError.malformed(file: file, reason: "not a JSON object, so the chat template cannot be set in it")
        }
        var value = ""
        JSON.writeString(template, to: &value)
        var i = 0
        func skipSpace() { while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { i += 1 } }
        /// Moves past the string starting at `i` (its opening quote).
        func skipString() {
            i += 1
            while i < bytes.count && bytes[i] != UInt8(ascii: "\"") { i += bytes[i] == UInt8(ascii: "\\") ? 2 : 1 }
            i += 1
        }
        /// Moves past the value starting at `i` (the text is valid JSON).
        func skipValue() {
            switch bytes[i] {
            case UInt8(ascii: "\""): skipString()
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                var depth = 0
                repeat {
                    switch bytes[i] {
                    case UInt8(ascii: "\""): skipString(); continue
                    case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                    case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
                    default: break
                    }
                    i += 1
                } while depth > 0
            default:  // a number, true, false or null
                while i < bytes.count, !",}] \t\n\r".utf8.contains(bytes[i]) { i += 1 }
            }
        }
        skipSpace()
        i += 1  // {
        var lastEnd: Int?
        while true {
            skipSpace()
            if bytes[i] == UInt8(ascii: "}") { break }
            if bytes[i] == UInt8(ascii: ",") { i += 1; skipSpace() }
            let keyStart = i
            skipString()
            let key = (try? JSON.parse(String(decoding: bytes[keyStart..<i], as: UTF8.self)))?.stringValue
            skipSpace()
            i += 1  // :
            skipSpace()
            let valueStart = i
            skipValue()
            if key == "chat_template" {
                return String(decoding: bytes[..<valueStart], as: UTF8.self) + value + String(decoding: bytes[i...], as: UTF8.self)
            }
            lastEnd = i
        }
        guard let lastEnd else {
            return String(decoding: bytes[..<i], as: UTF8.self) + "\"chat_template\": " + value + String(decoding: bytes[i...], as: UTF8.self)
        }
        // The new member's indentation is the first member's (a space when it is on the brace's line).
        let open = bytes.firstIndex(of: UInt8(ascii: "{"))!
        var j = open + 1
        while [0x20, 0x09, 0x0A, 0x0D].contains(bytes[j]) { j += 1 }
        let space = String(decoding: bytes[(open + 1)..<j], as: UTF8.self)
        let indent = space.contains("\n") ? space : " "
        return String(decoding: bytes[..<lastEnd], as: UTF8.self) + "," + indent + "\"chat_template\": " + value
            + String(decoding: bytes[lastEnd...], as: UTF8.self)
    }
}

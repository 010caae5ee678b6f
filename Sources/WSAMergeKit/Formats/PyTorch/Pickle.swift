/// A pickle reader that executes nothing: it interprets the opcodes of pickle protocols 0–5 into
/// plain values (`PickleValue`, with containers kept in `Pickle.objects`). It never imports or
/// calls anything. A global (`GLOBAL`, `STACK_GLOBAL`, `INST`) must be one of the few a
/// weights-only PyTorch checkpoint needs (`PickleGlobal`); any other is refused at the opcode
/// that names it. `REDUCE`, `NEWOBJ` and `BUILD` only record call nodes, except for the
/// allow-listed constructors of plain data (`OrderedDict`, `set`, `frozenset`, `torch.Size`,
/// `_codecs.encode`), which are read as the data they would make.
///
/// Hostile input is bounded: every length is checked against the bytes left before anything is
/// allocated, and the memo, the stack and the nesting of marks have fixed limits. Containers live
/// in one flat array and refer to each other by index, so cycles and deep nesting cost no
/// recursion here (the consumer bounds its own traversal depth).
public struct Pickle: Sendable {
    /// The value `STOP` left on the stack.
    public let root: PickleValue
    /// Every container, call node and persistent id, indexed by `PickleValue.object`.
    public let objects: [PickleObject]

    /// Limits, fixed: a weights-only checkpoint stays far below each.
    public static let maxMemo = 1 << 20
    public static let maxStack = 1 << 20
    public static let maxMarkDepth = 256
    /// Digits of a protocol 0 `LONG` and bytes of a `LONG1`/`LONG4` integer (256 bytes: 617
    /// digits, far beyond any integer a checkpoint holds; converting one to decimal costs the
    /// product of its bytes and digits, so a larger cap let a small pickle take minutes).
    public static let maxIntegerBytes = 256

    public subscript(id: Int) -> PickleObject { objects[id] }

    /// Interprets `bytes` (a whole pickle). `file` names the input in errors.
    ///
    /// - Throws: `WSAMergeError.malformed` on a refused global, a malformed opcode stream or a
    ///   bound exceeded; never traps on any input.
    public init(bytes: [UInt8], file: String) throws {
        var machine = PickleMachine(bytes: bytes, file: file)
        root = try machine.run()
        objects = machine.objects
    }
}

/// A plain pickle value. Containers and call nodes are `object(index)` into `Pickle.objects`.
public enum PickleValue: Equatable, Sendable {
    case none
    case bool(Bool)
    case int(Int)
    /// An integer beyond 64 bits, as decimal text.
    case bigInt(String)
    case float(Double)
    case string(String)
    case bytes([UInt8])
    /// An allow-listed global (a storage type, a dtype, a rebuild function, …).
    case global(PickleGlobal)
    case object(Int)

    var objectID: Int? { if case .object(let id) = self { id } else { nil } }
}

/// A container or node of the pickle.
public struct PickleObject: Sendable {
    public enum Kind: Sendable { case tuple, list, dict, set, call, persistentID }

    public var kind: Kind
    /// Elements (tuple, list, set), keys (dict), arguments (call), or the id (persistentID).
    public var items: [PickleValue] = []
    /// Dict values, parallel to `items`.
    public var values: [PickleValue] = []
    /// A call node's callable.
    public var callable: PickleGlobal?
    /// Dict keys already present (strings and ints), for Python's last-one-wins rule.
    var keyIndex: [DictKey: Int] = [:]

    enum DictKey: Hashable, Sendable { case string(String), int(Int) }

    init(kind: Kind, items: [PickleValue] = [], callable: PickleGlobal? = nil) {
        self.kind = kind
        self.items = items
        self.callable = callable
    }
}

/// The globals a weights-only checkpoint may name. Anything else is refused.
public enum PickleGlobal: Equatable, Sendable {
    case orderedDict
    case rebuildTensorV2
    /// `_rebuild_tensor_v3(untyped storage, …, dtype)`: how torch saves the dtypes that have no
    /// legacy typed storage (float8, uint16/32/64): an `UntypedStorage` with a `torch.<dtype>`.
    case rebuildTensorV3
    case rebuildParameter
    case rebuildParameterWithState
    /// `torch.FloatStorage` … (`dtype` set) or `torch.UntypedStorage` (`dtype` nil: bytes).
    case storage(name: String, dtype: DType?)
    /// `torch.float32` …; `dtype` is nil when safetensors has no such type (complex32, bits8, …).
    case dtype(name: String, dtype: DType?)
    case size, device, codecsEncode, set, frozenset, slice

    /// The dotted name, for messages.
    public var name: String {
        switch self {
        case .orderedDict: "collections.OrderedDict"
        case .rebuildTensorV2: "torch._utils._rebuild_tensor_v2"
        case .rebuildTensorV3: "torch._utils._rebuild_tensor_v3"
        case .rebuildParameter: "torch._utils._rebuild_parameter"
        case .rebuildParameterWithState: "torch._utils._rebuild_parameter_with_state"
        case .storage(let name, _), .dtype(let name, _): name
        case .size: "torch.Size"
        case .device: "torch.device"
        case .codecsEncode: "_codecs.encode"
        case .set: "builtins.set"
        case .frozenset: "builtins.frozenset"
        case .slice: "builtins.slice"
        }
    }

    static let typedStorages: [String: DType] = [
        "FloatStorage": .F32, "DoubleStorage": .F64, "HalfStorage": .F16, "BFloat16Storage": .BF16,
        "LongStorage": .I64, "IntStorage": .I32, "ShortStorage": .I16, "CharStorage": .I8,
        "ByteStorage": .U8, "BoolStorage": .BOOL, "ComplexFloatStorage": .C64,
    ]

    /// Every `torch.<dtype>` name; those without a safetensors type map to nil.
    static let torchDTypes: [String: DType?] = [
        "float32": .F32, "float": .F32, "float64": .F64, "double": .F64, "float16": .F16, "half": .F16,
        "bfloat16": .BF16, "int64": .I64, "long": .I64, "int32": .I32, "int": .I32, "int16": .I16,
        "short": .I16, "int8": .I8, "uint8": .U8, "bool": .BOOL, "uint16": .U16, "uint32": .U32,
        "uint64": .U64, "float8_e4m3fn": .F8_E4M3, "float8_e5m2": .F8_E5M2,
        "float8_e4m3fnuz": .F8_E4M3FNUZ, "float8_e5m2fnuz": .F8_E5M2FNUZ, "float8_e8m0fnu": .F8_E8M0,
        "complex64": .C64, "cfloat": .C64,
        "complex128": nil, "cdouble": nil, "complex32": nil, "chalf": nil, "bcomplex32": nil,
        "float4_e2m1fn_x2": nil, "bits8": nil, "bits16": nil, "bits1x8": nil, "bits2x4": nil, "bits4x2": nil,
        "qint8": nil, "qint32": nil, "quint8": nil, "quint4x2": nil, "quint2x4": nil,
        "uint1": nil, "uint2": nil, "uint3": nil, "uint4": nil, "uint5": nil, "uint6": nil, "uint7": nil,
        "int1": nil, "int2": nil, "int3": nil, "int4": nil, "int5": nil, "int6": nil, "int7": nil,
    ]

    /// The allow-listed global `module.name`, or nil.
    static func allowed(module: String, name: String) -> PickleGlobal? {
        switch (module, name) {
        case ("collections", "OrderedDict"): return .orderedDict
        case ("torch._utils", "_rebuild_tensor_v2"): return .rebuildTensorV2
        case ("torch._utils", "_rebuild_tensor_v3"): return .rebuildTensorV3
        case ("torch._utils", "_rebuild_parameter"): return .rebuildParameter
        case ("torch._utils", "_rebuild_parameter_with_state"): return .rebuildParameterWithState
        case ("torch", "UntypedStorage"), ("torch.storage", "UntypedStorage"):
            return .storage(name: "torch.UntypedStorage", dtype: nil)
        case ("torch", "Size"): return .size
        case ("torch", "device"): return .device
        case ("_codecs", "encode"): return .codecsEncode
        // Protocols 0–2 written by Python 3 name the builtins module `__builtin__`.
        case ("builtins", "set"), ("__builtin__", "set"): return .set
        case ("builtins", "frozenset"), ("__builtin__", "frozenset"): return .frozenset
        case ("builtins", "slice"), ("__builtin__", "slice"): return .slice
        default: break
        }
        guard module == "torch" else { return nil }
        if let dtype = typedStorages[name] { return .storage(name: "torch." + name, dtype: dtype) }
        if let dtype = torchDTypes[name] { return .dtype(name: "torch." + name, dtype: dtype) }
        return nil
    }
}

/// The interpreter's state while it runs.
private struct PickleMachine {
    let bytes: [UInt8]
    let file: String
    var position = 0
    var stack: [PickleValue] = []
    /// Stack heights at each open `MARK`.
    var marks: [Int] = []
    var memo: [Int: PickleValue] = [:]
    var objects: [PickleObject] = []

    init(bytes: [UInt8], file: String) {
        self.bytes = bytes
        self.file = file
    }

    // MARK: errors

    /// The byte offset of the opcode being run, for messages.
    var opcodeStart = 0

    func malformed(_ reason: String) -> WSAMergeError {
        .malformed(file: file, reason: "pickle is malformed at byte \(opcodeStart): \(reason)")
    }

    func refused(_ dotted: String) -> WSAMergeError {
        .malformed(file: file, reason: "pickle references '\(printable(dotted))', which a weights-only checkpoint never needs; nothing was executed")
    }

    // MARK: reading the opcode stream

    var remaining: Int { bytes.count - position }

    mutating func byte() throws -> UInt8 {
        guard position < bytes.count else { throw malformed("the pickle ends without STOP") }
        defer { position += 1 }
        return bytes[position]
    }

    /// `count` bytes, checked against what is left before anything is allocated.
    mutating func take(_ count: Int) throws -> ArraySlice<UInt8> {
        guard count >= 0, count <= remaining else {
            throw malformed("a length of \(count) bytes runs past the end of the pickle (\(remaining) left)")
        }
        defer { position += count }
        return bytes[position..<position + count]
    }

    /// A little-endian unsigned integer of `width` bytes (at most 8), as Int when it fits.
    mutating func unsigned(_ width: Int) throws -> Int {
        let raw = try take(width)
        var value: UInt64 = 0
        for (i, b) in raw.enumerated() { value |= UInt64(b) << (8 * UInt64(i)) }
        guard let n = Int(exactly: value) else { throw malformed("a length of \(value) bytes is too large") }
        return n
    }

    mutating func signed32() throws -> Int {
        Int(Int32(bitPattern: UInt32(try unsigned(4))))
    }

    /// The bytes up to the next newline (the newline is consumed, not returned).
    mutating func line() throws -> ArraySlice<UInt8> {
        guard let end = bytes[position...].firstIndex(of: 0x0A) else {
            throw malformed("a text argument has no terminating newline")
        }
        defer { position = end + 1 }
        return bytes[position..<end]
    }

    mutating func lineText() throws -> String {
        let raw = try line()
        guard let text = String(validatingUTF8Bytes: raw) else { throw malformed("a text argument is not UTF-8") }
        return text
    }

    // MARK: the stack

    mutating func push(_ value: PickleValue) throws {
        guard stack.count < Pickle.maxStack else { throw malformed("the stack holds more than \(Pickle.maxStack) items") }
        stack.append(value)
    }

    mutating func pop() throws -> PickleValue {
        guard let top = stack.last, stack.count > (marks.last ?? 0) else { throw malformed("pop from an empty stack") }
        stack.removeLast()
        return top
    }

    mutating func top() throws -> PickleValue {
        guard let top = stack.last, stack.count > (marks.last ?? 0) else { throw malformed("the stack is empty") }
        return top
    }

    /// The items above the topmost mark, removing them and the mark.
    mutating func popMark() throws -> [PickleValue] {
        guard let mark = marks.popLast() else { throw malformed("no MARK to pop to") }
        let items = Array(stack[mark...])
        stack.removeSubrange(mark...)
        return items
    }

    mutating func newObject(_ object: PickleObject) -> PickleValue {
        objects.append(object)
        return .object(objects.count - 1)
    }

    mutating func memoize(_ index: Int, _ value: PickleValue) throws {
        guard index >= 0 else { throw malformed("negative memo index") }
        guard memo[index] != nil || memo.count < Pickle.maxMemo else {
            throw malformed("the memo holds more than \(Pickle.maxMemo) entries")
        }
        memo[index] = value
    }

    func recall(_ index: Int) throws -> PickleValue {
        guard let value = memo[index] else { throw malformed("memo entry \(index) is read before it is written") }
        return value
    }

    /// The object `value` refers to when it is of `kind`.
    func object(_ value: PickleValue, _ kinds: PickleObject.Kind...) -> Int? {
        guard case .object(let id) = value, kinds.contains(objects[id].kind) else { return nil }
        return id
    }

    // MARK: containers

    mutating func append(_ items: [PickleValue], to target: PickleValue) throws {
        guard let id = object(target, .list) else { throw malformed("APPEND to something that is not a list") }
        objects[id].items.append(contentsOf: items)
    }

    mutating func setItems(_ pairs: [PickleValue], in target: PickleValue) throws {
        guard pairs.count % 2 == 0 else { throw malformed("SETITEMS with an odd number of items") }
        guard let id = object(target, .dict) else { throw malformed("SETITEM on something that is not a dict") }
        var k = 0
        while k < pairs.count {
            setItem(id, key: pairs[k], value: pairs[k + 1])
            k += 2
        }
    }

    mutating func setItem(_ id: Int, key: PickleValue, value: PickleValue) {
        let dictKey: PickleObject.DictKey? = switch key {
        case .string(let s): .string(s)
        case .int(let n): .int(n)
        default: nil
        }
        if let dictKey, let existing = objects[id].keyIndex[dictKey] {
            objects[id].values[existing] = value
            return
        }
        if let dictKey { objects[id].keyIndex[dictKey] = objects[id].items.count }
        objects[id].items.append(key)
        objects[id].values.append(value)
    }

    mutating func addItems(_ items: [PickleValue], to target: PickleValue) throws {
        guard let id = object(target, .set) else { throw malformed("ADDITEMS to something that is not a set") }
        objects[id].items.append(contentsOf: items)
    }

    /// The elements of a tuple or list value.
    func elements(_ value: PickleValue) -> [PickleValue]? {
        guard let id = object(value, .tuple, .list) else { return nil }
        return objects[id].items
    }

    // MARK: globals and calls

    func global(module: String, name: String) throws -> PickleValue {
        guard let global = PickleGlobal.allowed(module: module, name: name) else {
            throw refused(module + "." + name)
        }
        return .global(global)
    }

    /// `callable(*args)`, never run: plain-data constructors give their data, the rest a node.
    mutating func call(_ callable: PickleValue, _ args: [PickleValue]) throws -> PickleValue {
        guard case .global(let global) = callable else {
            throw malformed("a call of something that is not a global")
        }
        switch global {
        case .orderedDict:
            let value = newObject(PickleObject(kind: .dict))
            guard let items = args.first else { return value }
            guard args.count == 1, let pairs = elements(items) else { throw malformed("OrderedDict() with unexpected arguments") }
            for pair in pairs {
                guard let kv = elements(pair), kv.count == 2 else { throw malformed("OrderedDict() item is not a pair") }
                setItem(value.objectID!, key: kv[0], value: kv[1])
            }
            return value
        case .set, .frozenset:
            guard args.count <= 1 else { throw malformed("\(global.name)() with \(args.count) arguments") }
            var items: [PickleValue] = []
            if let first = args.first {
                guard let elements = elements(first) else { throw malformed("\(global.name)() of something that is not a list") }
                items = elements
            }
            return newObject(PickleObject(kind: .set, items: items))
        case .size:
            if args.isEmpty { return newObject(PickleObject(kind: .tuple)) }
            guard args.count == 1, let dims = elements(args[0]) else { throw malformed("torch.Size() of something that is not a tuple") }
            return newObject(PickleObject(kind: .tuple, items: dims))
        case .codecsEncode:
            // How protocols 0–2 write `bytes`: _codecs.encode(text, 'latin1').
            guard args.count == 2, case .string(let text) = args[0], case .string(let encoding) = args[1],
                  ["latin1", "latin-1", "iso-8859-1", "iso8859-1"].contains(encoding.lowercased()) else {
                throw malformed("_codecs.encode() with arguments other than (text, 'latin1')")
            }
            var out: [UInt8] = []
            out.reserveCapacity(text.unicodeScalars.count)
            for scalar in text.unicodeScalars {
                guard scalar.value <= 0xFF else { throw malformed("_codecs.encode() of text outside latin-1") }
                out.append(UInt8(scalar.value))
            }
            return .bytes(out)
        case .rebuildTensorV2, .rebuildTensorV3, .rebuildParameter, .rebuildParameterWithState, .device, .slice:
            return newObject(PickleObject(kind: .call, items: args, callable: global))
        case .storage, .dtype:
            throw malformed("a call of '\(global.name)', which a weights-only checkpoint never makes")
        }
    }

    // MARK: the interpreter

    mutating func run() throws -> PickleValue {
        while true {
            opcodeStart = position
            let op = try byte()
            switch op {
            case 0x2E: // STOP '.'
                guard marks.isEmpty else { throw malformed("STOP inside an open MARK") }
                guard stack.count == 1 else { throw malformed("STOP leaves \(stack.count) items on the stack") }
                return stack[0]
            case 0x80: // PROTO
                let version = try byte()
                guard version <= 5 else { throw malformed("unsupported pickle protocol \(version)") }
            case 0x95: // FRAME: a length hint only
                let length = try unsigned(8)
                guard length <= remaining else { throw malformed("a frame of \(length) bytes runs past the end") }

            // Marks and stack manipulation.
            case 0x28: // MARK '('
                guard marks.count < Pickle.maxMarkDepth else {
                    throw malformed("marks are nested more than \(Pickle.maxMarkDepth) deep")
                }
                marks.append(stack.count)
            case 0x30: _ = try pop() // POP '0'
            case 0x31: _ = try popMark() // POP_MARK '1'
            case 0x32: try push(try top()) // DUP '2'

            // Scalars.
            case 0x4E: try push(.none) // NONE 'N'
            case 0x88: try push(.bool(true)) // NEWTRUE
            case 0x89: try push(.bool(false)) // NEWFALSE
            case 0x4B: try push(.int(try unsigned(1))) // BININT1 'K'
            case 0x4D: try push(.int(try unsigned(2))) // BININT2 'M'
            case 0x4A: try push(.int(try signed32())) // BININT 'J'
            case 0x49: // INT 'I': decimal; I01/I00 are True/False
                let text = try lineText()
                if text == "01" { try push(.bool(true)) } else if text == "00" { try push(.bool(false)) } else {
                    try push(try decimalInteger(text))
                }
            case 0x4C: // LONG 'L': decimal with an optional L suffix
                var text = try lineText()
                if text.hasSuffix("L") { text.removeLast() }
                try push(try decimalInteger(text))
            case 0x8A: try push(try littleEndianInteger(try take(try unsigned(1)))) // LONG1
            case 0x8B: // LONG4
                let length = try signed32()
                guard length >= 0 else { throw malformed("LONG4 with a negative length") }
                try push(try littleEndianInteger(try take(length)))
            case 0x47: // BINFLOAT 'G': big-endian double
                let raw = try take(8)
                try push(.float(Double(bitPattern: raw.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })))
            case 0x46: // FLOAT 'F'
                let text = try lineText()
                guard let value = Double(text.trimmingSpaces) else { throw malformed("FLOAT '\(printable(text))' is not a number") }
                try push(.float(value))

            // Strings and bytes.
            case 0x58: try push(try unicode(try take(try unsigned(4)))) // BINUNICODE 'X'
            case 0x8C: try push(try unicode(try take(try unsigned(1)))) // SHORT_BINUNICODE
            case 0x8D: try push(try unicode(try take(try unsigned(8)))) // BINUNICODE8
            case 0x56: try push(.string(try rawUnicodeEscape(try line()))) // UNICODE 'V'
            case 0x54: // BINSTRING 'T' (Python 2 str, read as UTF-8 text as torch.load does)
                let length = try signed32()
                guard length >= 0 else { throw malformed("BINSTRING with a negative length") }
                try push(pythonTwoString(try take(length)))
            case 0x55: try push(pythonTwoString(try take(try unsigned(1)))) // SHORT_BINSTRING 'U'
            case 0x53: try push(pythonTwoString(try quotedString(try line()))) // STRING 'S'
            case 0x42: try push(.bytes(Array(try take(try unsigned(4))))) // BINBYTES 'B'
            case 0x43: try push(.bytes(Array(try take(try unsigned(1))))) // SHORT_BINBYTES 'C'
            case 0x8E, 0x96: try push(.bytes(Array(try take(try unsigned(8))))) // BINBYTES8, BYTEARRAY8
            case 0x97, 0x98: // NEXT_BUFFER, READONLY_BUFFER
                throw malformed("out-of-band buffers (pickle protocol 5) are not part of a checkpoint")

            // Containers.
            case 0x5D: try push(newObject(PickleObject(kind: .list))) // EMPTY_LIST ']'
            case 0x29: try push(newObject(PickleObject(kind: .tuple))) // EMPTY_TUPLE ')'
            case 0x7D: try push(newObject(PickleObject(kind: .dict))) // EMPTY_DICT '}'
            case 0x8F: try push(newObject(PickleObject(kind: .set))) // EMPTY_SET
            case 0x6C: try push(newObject(PickleObject(kind: .list, items: try popMark()))) // LIST 'l'
            case 0x74: try push(newObject(PickleObject(kind: .tuple, items: try popMark()))) // TUPLE 't'
            case 0x85, 0x86, 0x87: // TUPLE1, TUPLE2, TUPLE3
                let count = Int(op) - 0x84
                guard stack.count - (marks.last ?? 0) >= count else { throw malformed("TUPLE\(count) with too few items on the stack") }
                let items = Array(stack.suffix(count))
                stack.removeLast(count)
                try push(newObject(PickleObject(kind: .tuple, items: items)))
            case 0x91: try push(newObject(PickleObject(kind: .set, items: try popMark()))) // FROZENSET
            case 0x64: // DICT 'd'
                let items = try popMark()
                let dict = newObject(PickleObject(kind: .dict))
                try setItems(items, in: dict)
                try push(dict)
            case 0x61: // APPEND 'a'
                let item = try pop()
                try append([item], to: try top())
            case 0x65: // APPENDS 'e'
                let items = try popMark()
                try append(items, to: try top())
            case 0x73: // SETITEM 's'
                let value = try pop()
                let key = try pop()
                try setItems([key, value], in: try top())
            case 0x75: // SETITEMS 'u'
                let items = try popMark()
                try setItems(items, in: try top())
            case 0x90: // ADDITEMS
                let items = try popMark()
                try addItems(items, to: try top())

            // Memo.
            case 0x70: try memoize(try decimalIndex(try lineText()), try top()) // PUT 'p'
            case 0x71: try memoize(try unsigned(1), try top()) // BINPUT 'q'
            case 0x72: try memoize(try unsigned(4), try top()) // LONG_BINPUT 'r'
            case 0x94: try memoize(memo.count, try top()) // MEMOIZE
            case 0x67: try push(try recall(try decimalIndex(try lineText()))) // GET 'g'
            case 0x68: try push(try recall(try unsigned(1))) // BINGET 'h'
            case 0x6A: try push(try recall(try unsigned(4))) // LONG_BINGET 'j'

            // Globals: the allow-list is checked here, where the name appears.
            case 0x63: // GLOBAL 'c'
                let module = try lineText(), name = try lineText()
                try push(try global(module: module, name: name))
            case 0x93: // STACK_GLOBAL
                let name = try pop(), module = try pop()
                guard case .string(let m) = module, case .string(let n) = name else {
                    throw malformed("STACK_GLOBAL of something that is not two strings")
                }
                try push(try global(module: m, name: n))
            case 0x82, 0x83, 0x84: // EXT1, EXT2, EXT4
                throw malformed("the copyreg extension registry (EXT opcodes) is not part of a checkpoint")

            // Calls: recorded, never made.
            case 0x52: // REDUCE 'R'
                let args = try pop()
                let callable = try pop()
                guard let items = elements(args), object(args, .tuple) != nil else { throw malformed("REDUCE with arguments that are not a tuple") }
                try push(try call(callable, items))
            case 0x81: // NEWOBJ
                let args = try pop()
                let cls = try pop()
                guard let items = elements(args) else { throw malformed("NEWOBJ with arguments that are not a tuple") }
                try push(try call(cls, items))
            case 0x92: // NEWOBJ_EX
                let kwargs = try pop()
                let args = try pop()
                let cls = try pop()
                guard let items = elements(args), let kw = object(kwargs, .dict), objects[kw].items.isEmpty else {
                    throw malformed("NEWOBJ_EX with arguments other than a tuple and no keywords")
                }
                try push(try call(cls, items))
            case 0x69: // INST 'i': module and name on lines, arguments since the mark
                let module = try lineText(), name = try lineText()
                let callable = try global(module: module, name: name)
                try push(try call(callable, try popMark()))
            case 0x6F: // OBJ 'o': the class is the first item after the mark
                var items = try popMark()
                guard !items.isEmpty else { throw malformed("OBJ without a class") }
                let cls = items.removeFirst()
                try push(try call(cls, items))
            case 0x62: // BUILD 'b': the state is dropped, never applied
                _ = try pop()
                guard case .object = try top() else { throw malformed("BUILD on a value that is not an object") }
            case 0x50: // PERSID 'P'
                let id = try lineText()
                try push(newObject(PickleObject(kind: .persistentID, items: [.string(id)])))
            case 0x51: // BINPERSID 'Q'
                let id = try pop()
                try push(newObject(PickleObject(kind: .persistentID, items: [id])))

            default:
                throw malformed("unknown opcode 0x\(String(op, radix: 16))")
            }
        }
    }

    // MARK: argument decoding

    func decimalIndex(_ text: String) throws -> Int {
        guard let n = Int(text), n >= 0 else { throw malformed("memo index '\(printable(text))' is not a number") }
        return n
    }

    func decimalInteger(_ text: String) throws -> PickleValue {
        if let n = Int(text) { return .int(n) }
        guard text.utf8.count <= Pickle.maxIntegerBytes else { throw malformed("an integer of more than \(Pickle.maxIntegerBytes) digits") }
        let digits = text.hasPrefix("-") || text.hasPrefix("+") ? text.dropFirst() : Substring(text)
        guard !digits.isEmpty, digits.utf8.allSatisfy({ (0x30...0x39).contains($0) }) else {
            throw malformed("'\(printable(text))' is not an integer")
        }
        return .bigInt(text.hasPrefix("+") ? String(digits) : text)
    }

    /// A two's-complement little-endian integer (LONG1/LONG4).
    func littleEndianInteger(_ raw: ArraySlice<UInt8>) throws -> PickleValue {
        guard let last = raw.last else { return .int(0) }
        guard raw.count <= Pickle.maxIntegerBytes else { throw malformed("an integer of more than \(Pickle.maxIntegerBytes) bytes") }
        let negative = last & 0x80 != 0
        if raw.count <= 8 {
            var value: UInt64 = negative ? ~0 : 0
            for (i, b) in raw.enumerated() {
                value &= ~(0xFF << (8 * UInt64(i)))
                value |= UInt64(b) << (8 * UInt64(i))
            }
            return .int(Int(Int64(bitPattern: value)))
        }
        // Beyond 64 bits: the magnitude in decimal, by repeated division.
        var magnitude = Array(raw)
        if negative { // two's complement negation
            var carry = 1
            for i in magnitude.indices {
                let v = Int(~magnitude[i]) + carry
                magnitude[i] = UInt8(v & 0xFF)
                carry = v >> 8
            }
        }
        while magnitude.count > 1 && magnitude.last == 0 { magnitude.removeLast() }
        if magnitude.count <= 8 {
            let value = magnitude.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            if negative {
                if value <= UInt64(Int.max) + 1 { return .int(value == UInt64(Int.max) + 1 ? Int.min : -Int(value)) }
                return .bigInt("-" + String(value))
            }
            if let n = Int(exactly: value) { return .int(n) }
            return .bigInt(String(value))
        }
        var digits: [UInt8] = []
        while !(magnitude.count == 1 && magnitude[0] == 0) {
            var remainder = 0
            for i in magnitude.indices.reversed() {
                let v = remainder << 8 | Int(magnitude[i])
                magnitude[i] = UInt8(v / 10)
                remainder = v % 10
            }
            digits.append(UInt8(0x30 + remainder))
            while magnitude.count > 1 && magnitude.last == 0 { magnitude.removeLast() }
        }
        return .bigInt((negative ? "-" : "") + String(decoding: digits.reversed(), as: UTF8.self))
    }

    func unicode(_ raw: ArraySlice<UInt8>) throws -> PickleValue {
        guard let text = String(validatingUTF8Bytes: raw) else { throw malformed("a string is not valid UTF-8") }
        return .string(text)
    }

    /// A Python 2 `str`: text when it is UTF-8 (torch.load's encoding), else bytes.
    func pythonTwoString(_ raw: ArraySlice<UInt8>) -> PickleValue {
        if let text = String(validatingUTF8Bytes: raw) { return .string(text) }
        return .bytes(Array(raw))
    }

    /// The body of a protocol 0 `STRING`: a quoted Python literal with backslash escapes.
    func quotedString(_ raw: ArraySlice<UInt8>) throws -> ArraySlice<UInt8> {
        guard raw.count >= 2, let q = raw.first, q == raw.last, q == 0x27 || q == 0x22 else {
            throw malformed("STRING argument is not quoted")
        }
        var out: [UInt8] = []
        var i = raw.startIndex + 1
        let end = raw.endIndex - 1
        while i < end {
            let c = raw[i]
            i += 1
            guard c == 0x5C, i < end else { out.append(c); continue }
            let e = raw[i]
            i += 1
            switch e {
            case 0x6E: out.append(0x0A) // \n
            case 0x72: out.append(0x0D) // \r
            case 0x74: out.append(0x09) // \t
            case 0x61: out.append(0x07) // \a
            case 0x62: out.append(0x08) // \b
            case 0x66: out.append(0x0C) // \f
            case 0x76: out.append(0x0B) // \v
            case 0x0A: break // line continuation
            case 0x78: // \xhh
                guard i + 2 <= end, let v = UInt8(String(decoding: raw[i..<i + 2], as: UTF8.self), radix: 16) else {
                    throw malformed("bad \\x escape in a STRING")
                }
                out.append(v)
                i += 2
            case 0x30...0x37: // up to three octal digits
                var v = Int(e - 0x30)
                var n = 1
                while n < 3, i < end, (0x30...0x37).contains(raw[i]) {
                    v = v * 8 + Int(raw[i] - 0x30)
                    i += 1
                    n += 1
                }
                out.append(UInt8(v & 0xFF))
            default: // \\, \', \" and unknown escapes (kept whole, as Python does)
                if e == 0x5C || e == 0x27 || e == 0x22 { out.append(e) } else { out.append(0x5C); out.append(e) }
            }
        }
        return out[...]
    }

    /// A protocol 0 `UNICODE` argument: raw-unicode-escape (\uXXXX, \UXXXXXXXX, other bytes latin-1).
    func rawUnicodeEscape(_ raw: ArraySlice<UInt8>) throws -> String {
        var scalars = String.UnicodeScalarView()
        var i = raw.startIndex
        while i < raw.endIndex {
            let c = raw[i]
            if c == 0x5C, i + 1 < raw.endIndex, raw[i + 1] == 0x75 || raw[i + 1] == 0x55 {
                let width = raw[i + 1] == 0x75 ? 4 : 8
                guard i + 2 + width <= raw.endIndex,
                      let v = UInt32(String(decoding: raw[i + 2..<i + 2 + width], as: UTF8.self), radix: 16),
                      let scalar = Unicode.Scalar(v) else {
                    throw malformed("bad \\u escape in a UNICODE argument")
                }
                scalars.append(scalar)
                i += 2 + width
            } else {
                scalars.append(Unicode.Scalar(c))
                i += 1
            }
        }
        return String(scalars)
    }
}

extension String {
    /// The bytes as a String when they are valid UTF-8 (nil otherwise, never repaired).
    init?(validatingUTF8Bytes raw: ArraySlice<UInt8>) {
        var iterator = raw.makeIterator()
        var decoder = UTF8()
        var scalars = String.UnicodeScalarView()
        loop: while true {
            switch decoder.decode(&iterator) {
            case .scalarValue(let s): scalars.append(s)
            case .emptyInput: break loop
            case .error: return nil
            }
        }
        self = String(scalars)
    }

    var trimmingSpaces: Substring {
        let s = drop(while: { $0 == " " })
        return s.prefix(upTo: s.lastIndex(where: { $0 != " " }).map { s.index(after: $0) } ?? s.startIndex)
    }
}

/// `text` safe for a one-line message: control characters escaped, at most 120 characters.
func printable(_ text: String) -> String {
    var out = ""
    for scalar in text.unicodeScalars {
        if out.unicodeScalars.count >= 120 { out += "…"; break }
        if scalar.value < 0x20 || scalar.value == 0x7F {
            out += "\\x" + (scalar.value < 0x10 ? "0" : "") + String(scalar.value, radix: 16)
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
    return out
}

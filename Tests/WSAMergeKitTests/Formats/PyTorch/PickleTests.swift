import Testing
@testable import WSAMergeKit

/// The pickle interpreter: opcodes of every protocol into values, the allow-list, the bounds.
@Suite struct PickleTests {
    static func text(_ s: String) -> [UInt8] { Array(s.utf8) }
    static func uni(_ s: String) -> [UInt8] { [0x58] + Bytes.le(UInt32(s.utf8.count)) + Array(s.utf8) }
    static func global(_ module: String, _ name: String) -> [UInt8] { [0x63] + text(module + "\n" + name + "\n") }

    func parse(_ bytes: [UInt8]) throws -> Pickle { try Pickle(bytes: bytes, file: "p.pt") }

    func items(_ pickle: Pickle, _ value: PickleValue) -> [PickleValue] {
        guard case .object(let id) = value else { return [] }
        return pickle[id].items
    }

    @Test func protocolZeroTextOpcodes() throws {
        let source = "(lp0\nI1\naI01\naF1.5\naS'a\\nb\\x41\\101'\np1\naVcaf\\u00e9\naL123456789012345678901234567890L\naI-7\nag1\na."
        let pickle = try parse(Self.text(source))
        #expect(items(pickle, pickle.root) == [.int(1), .bool(true), .float(1.5), .string("a\nbAA"), .string("café"),
                                               .bigInt("123456789012345678901234567890"), .int(-7), .string("a\nbAA")])
    }

    @Test func binaryIntegersAndFloats() throws {
        var bytes: [UInt8] = [0x80, 0x02, 0x28]
        bytes += [0x4B, 0xFF]                                  // BININT1 255
        bytes += [0x4D, 0x34, 0x12]                            // BININT2 0x1234
        bytes += [0x4A] + Bytes.le(Int32(-5))                  // BININT -5
        bytes += [0x8A, 0x01, 0xFF]                            // LONG1 -1
        bytes += [0x8A, 0x08, 0, 0, 0, 0, 0, 0, 0, 0x80]       // LONG1 Int.min
        bytes += [0x8A, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]    // LONG1 2^64
        bytes += [0x8A, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF]    // LONG1 -2^64
        bytes += [0x8A, 0x00]                                  // LONG1 0
        bytes += [0x47] + Bytes.le((2.5).bitPattern).reversed() // BINFLOAT, big-endian
        bytes += [0x88, 0x89, 0x4E]                            // True, False, None
        bytes += [0x74, 0x2E]
        let pickle = try parse(bytes)
        #expect(items(pickle, pickle.root) == [.int(255), .int(0x1234), .int(-5), .int(-1), .int(Int.min),
                                               .bigInt("18446744073709551616"), .bigInt("-18446744073709551616"), .int(0),
                                               .float(2.5), .bool(true), .bool(false), .none])
    }

    @Test func protocolFourStringsMemoAndContainers() throws {
        var bytes: [UInt8] = [0x80, 0x04, 0x95] + Bytes.le(UInt64(2))     // PROTO 4, FRAME (a hint only)
        bytes += [0x7D, 0x94]                                             // EMPTY_DICT, MEMOIZE (0)
        bytes += [0x28, 0x8C, 0x01] + Self.text("k") + [0x94]            // MARK, 'k', MEMOIZE (1)
        bytes += [0x8E] + Bytes.le(UInt64(2)) + [0xAB, 0xCD]             // BINBYTES8
        bytes += [0x68, 0x01, 0x43, 0x01, 0x07]                          // BINGET 1 ('k' again), SHORT_BINBYTES
        bytes += [0x75]                                                  // SETITEMS: k → b'\xab\xcd', then k → b'\x07'
        bytes += [0x8C, 0x01] + Self.text("s") + [0x8F, 0x28, 0x4B, 0x01, 0x4B, 0x02, 0x90, 0x73] // 's': {1, 2}
        bytes += [0x2E]
        let pickle = try parse(bytes)
        guard case .object(let id) = pickle.root else { Issue.record("no dict"); return }
        #expect(pickle[id].kind == .dict)
        #expect(pickle[id].items == [.string("k"), .string("s")])
        #expect(pickle[id].values.first == .bytes([0x07]))
        #expect(items(pickle, pickle[id].values[1]) == [.int(1), .int(2)])
    }

    @Test func allowListedConstructorsGiveData() throws {
        // OrderedDict(), _codecs.encode('\xff', 'latin1'), torch.Size((2, 3)), builtins.set([1]).
        var bytes: [UInt8] = [0x80, 0x02, 0x28]
        bytes += Self.global("collections", "OrderedDict") + [0x29, 0x52]
        bytes += Self.global("_codecs", "encode") + Self.uni("\u{FF}a") + Self.uni("latin1") + [0x86, 0x52]
        bytes += Self.global("torch", "Size") + [0x4B, 0x02, 0x4B, 0x03, 0x86, 0x85, 0x52]
        bytes += Self.global("__builtin__", "set") + [0x5D, 0x4B, 0x01, 0x61, 0x85, 0x52]
        bytes += [0x74, 0x2E]
        let pickle = try parse(bytes)
        let values = items(pickle, pickle.root)
        #expect(values.count == 4)
        #expect(values[1] == .bytes([0xFF, 0x61]))
        #expect(items(pickle, values[2]) == [.int(2), .int(3)])
        #expect(items(pickle, values[3]) == [.int(1)])
        if case .object(let dict) = values[0] { #expect(pickle[dict].kind == .dict) } else { Issue.record("no dict") }
    }

    @Test func rebuildCallsAreNodesNotCalls() throws {
        let bytes = [0x80, 0x02] + Self.global("torch._utils", "_rebuild_tensor_v2") + [0x4B, 0x01, 0x85, 0x52, 0x2E]
        let pickle = try parse(bytes)
        guard case .object(let id) = pickle.root else { Issue.record("no node"); return }
        #expect(pickle[id].kind == .call && pickle[id].callable == .rebuildTensorV2 && pickle[id].items == [.int(1)])
    }

    static let forbidden: [(String, [UInt8])] = [
        ("os.system", [0x80, 0x02] + global("os", "system") + uni("touch /tmp/x") + [0x85, 0x52, 0x2E]),
        ("posix.system", [0x80, 0x02] + global("posix", "system") + [0x2E]),
        ("builtins.eval", [0x80, 0x02] + global("builtins", "eval") + [0x2E]),
        ("builtins.getattr", [0x80, 0x02] + global("builtins", "getattr") + [0x2E]),
        ("torch.load", [0x80, 0x02] + global("torch", "load") + [0x2E]),
        ("torch._utils._rebuild_tensor", [0x80, 0x02] + global("torch._utils", "_rebuild_tensor") + [0x2E]),
        ("numpy.core.multiarray._reconstruct", [0x80, 0x02] + global("numpy.core.multiarray", "_reconstruct") + [0x2E]),
        // STACK_GLOBAL, names from the stack and from the memo.
        ("os.system", [0x80, 0x04, 0x8C, 0x02] + text("os") + [0x8C, 0x06] + text("system") + [0x93, 0x2E]),
        ("subprocess.Popen", [0x80, 0x04, 0x8C, 0x0A] + text("subprocess") + [0x94, 0x30, 0x8C, 0x05] + text("Popen") + [0x94, 0x30, 0x68, 0x00, 0x68, 0x01, 0x93, 0x2E]),
        // A newline smuggled into STACK_GLOBAL's module name.
        ("torch\\x0aos.system", [0x80, 0x04, 0x8C, 0x08] + text("torch\nos") + [0x8C, 0x06] + text("system") + [0x93, 0x2E]),
        // INST (protocol 0).
        ("os.system", [0x28] + text("S'ls'\nios\nsystem\n.")),
    ]

    @Test(arguments: forbidden.indices)
    func globalsOutsideTheAllowListAreRefusedByName(index: Int) {
        let (name, bytes) = Self.forbidden[index]
        do {
            _ = try parse(bytes)
            Issue.record("accepted \(name)")
        } catch let error as WSAMergeError {
            #expect(error.description == "p.pt: pickle references '\(name)', which a weights-only checkpoint never needs; nothing was executed")
            #expect(error.exitCode == 65)
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func malformedStreamsAndBoundsAreRefused() throws {
        let cases: [([UInt8], String)] = [
            ([0x80, 0x02, 0x58] + Bytes.le(UInt32(0xFFFF_FFF0)) + [0x61, 0x2E], "runs past the end"),
            ([0x80, 0x04, 0x8D] + Bytes.le(UInt64(1) << 62) + [0x2E], "runs past the end"),
            ([0x80, 0x04, 0x8E] + Bytes.le(UInt64.max) + [0x2E], "too large"),
            ([0x80, 0x02] + [UInt8](repeating: 0x28, count: 300) + [0x2E], "marks are nested"),
            ([0x80, 0x02, 0x68, 0x05, 0x2E], "read before it is written"),
            ([0x80, 0x02, 0x30, 0x2E], "empty stack"),
            ([0x80, 0x02, 0x4E, 0x4E, 0x2E], "leaves 2 items"),
            ([0x80, 0x02, 0x4E], "without STOP"),
            ([0x80, 0x02, 0xFF, 0x2E], "unknown opcode 0xff"),
            ([0x80, 0x06, 0x4E, 0x2E], "protocol 6"),
            ([0x80, 0x02, 0x82, 0x01, 0x2E], "extension registry"),
            ([0x80, 0x05, 0x97, 0x2E], "out-of-band"),
            ([0x80, 0x02, 0x4E, 0x29, 0x52, 0x2E], "not a global"),
            ([0x80, 0x02, 0x4E, 0x4B, 0x01, 0x61, 0x2E], "not a list"),
            ([0x80, 0x02] + Self.global("torch", "FloatStorage") + [0x29, 0x52, 0x2E], "never makes"),
            ([0x80, 0x02, 0x8B] + Bytes.le(UInt32(0x8000_0000)) + [0x2E], "negative length"),
            ([0x80, 0x02, 0x28, 0x4E, 0x2E], "open MARK"),
            (Self.text("I12x\n."), "not an integer"),
            ([0x80, 0x02, 0x58, 0x02, 0, 0, 0, 0xC3, 0x28, 0x2E], "not valid UTF-8"),
            // A LONG4 past 256 bytes (its decimal text would cost bytes × digits to make).
            ([0x80, 0x02, 0x8B] + Bytes.le(UInt32(257)) + [UInt8](repeating: 0x7F, count: 257) + [0x2E], "more than 256 bytes"),
        ]
        for (bytes, mention) in cases {
            expectMalformed("p.pt: ", mention) { _ = try parse(bytes) }
        }
    }

    @Test func theMemoIsBounded() {
        var bytes: [UInt8] = [0x80, 0x02, 0x4E]
        for i in 0...Pickle.maxMemo { bytes += [0x72] + Bytes.le(UInt32(i)) }
        bytes.append(0x2E)
        expectMalformed("memo holds more than") { _ = try parse(bytes) }
    }

    /// Mutations of a real checkpoint's pickle never trap; each parses or is refused cleanly.
    @Test func mutatedPicklesNeverTrap() throws {
        let seed = try PyTorchFixtures.pickle(of: "views.pt")
        var rng = SplitMix(seed: 17)
        for _ in 0..<3000 {
            var bytes = seed
            for _ in 0..<(1 + Int(rng.next() % 4)) {
                let at = Int(rng.next() % UInt64(bytes.count))
                switch rng.next() % 3 {
                case 0: bytes[at] = UInt8(truncatingIfNeeded: rng.next())
                case 1: bytes.remove(at: at)
                default: bytes.insert(UInt8(truncatingIfNeeded: rng.next()), at: at)
                }
            }
            if let pickle = try? Pickle(bytes: bytes, file: "m.pt") {
                _ = try? TorchCheckpointContents(pickle: pickle, file: "m.pt", rootName: "m")
            }
        }
    }
}

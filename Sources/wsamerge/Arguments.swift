import ArgumentParser
import WSAMergeKit

// Typed option values: each parses once, and a mistake gets ArgumentParser's one message
// ("The value 'x' is invalid for '--dtype <dtype>'. Please provide one of …").

/// `--strategy`: a registered strategy or one of its aliases.
struct StrategyName: ExpressibleByArgument {
    let name: String

    init?(argument: String) {
        guard Strategies.named(argument) != nil else { return nil }
        name = argument
    }

    static var allValueStrings: [String] { Strategies.names }
}

/// `--dtype` of `fuse`: `keep` or a float type wsamerge writes.
enum MergeDType: ExpressibleByArgument, Equatable {
    case keep
    case dtype(DType)

    init?(argument: String) {
        if argument == "keep" { self = .keep; return }
        guard let target = TargetDType(argument: argument) else { return nil }
        self = .dtype(target.dtype)
    }

    static var allValueStrings: [String] { ["keep"] + TargetDType.allValueStrings }

    var dtype: DType? {
        if case .dtype(let dtype) = self { dtype } else { nil }
    }
}

/// `--dtype` of `convert`: a float type wsamerge writes.
struct TargetDType: ExpressibleByArgument {
    let dtype: DType

    init?(argument: String) {
        guard let dtype = DType(rawValue: argument), DType.targets.contains(dtype) else { return nil }
        self.dtype = dtype
    }

    static var allValueStrings: [String] { DType.targets.map(\.rawValue) }
}

/// `--weights w0,w1,…`.
struct WeightList: ExpressibleByArgument {
    let words: [String]

    init?(argument: String) {
        let words = argument.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingSpaces }
        guard !words.isEmpty, words.allSatisfy({ Double($0) != nil }) else { return nil }
        self.words = words
    }

    var values: [Double] { words.map { Double($0)! } }
}

/// `--param NAME=VALUE` or `--param NAME=v0,v1,…`.
struct ParameterAssignment: ExpressibleByArgument {
    let name: String
    let words: [String]

    init?(argument: String) {
        guard let eq = argument.firstIndex(of: "="), eq != argument.startIndex else { return nil }
        name = String(argument[..<eq]).trimmingSpaces
        let value = argument[argument.index(after: eq)...]
        guard !value.isEmpty else { return nil }
        words = value.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingSpaces }
    }
}

extension OnMissing: ExpressibleByArgument {}
extension ScopeFusion: ExpressibleByArgument {}
extension FisherNormalize: ExpressibleByArgument {}
extension WSARescale: ExpressibleByArgument {}
extension ScopeComparison.SortKey: ExpressibleByArgument {}
extension Comparison.SortKey: ExpressibleByArgument {}

extension StringProtocol {
    var trimmingSpaces: String { String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed()) }
}

import ArgumentParser
import WSAMergeKit

extension WSAMerge {
    struct Strategies: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the merge strategies and their options as JSON.")

        func run() throws {
            emit(WSAMergeKit.Strategies.json)
        }
    }
}

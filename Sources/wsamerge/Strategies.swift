import ArgumentParser
import WSAMergeKit

extension WSAMerge {
    struct StrategiesCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "strategies",
            abstract: "List the merge strategies with their inputs, files and parameters (type, scope, default) as JSON.")

        func run() throws {
            emit(Strategies.json)
        }
    }
}

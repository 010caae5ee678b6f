import ArgumentParser
import WSAMergeKit

extension WSAMerge {
    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List every tensor's name, dtype, shape and byte size (reads headers only).")

        @Argument(help: "Checkpoints: .safetensors, a sharded index or its directory, .npz, .npy, PyTorch .pt/.bin/.ckpt, a model directory, MODEL+LORA_ADAPTER.")
        var files: [String]

        @OptionGroup var common: CommonOptions

        @OptionGroup var report: ReportOptions

        func run() throws {
            let filter = try common.filter()
            // All or nothing: every input is opened (headers read and checked) before anything
            // is printed, so a bad input never follows a printed document.
            for checkpoint in try common.open(files) {
                switch report.format {
                case .json: emit(CheckpointReports.inspect(checkpoint, filter: filter))
                case .table: emit(CheckpointReports.inspectTable(checkpoint, filter: filter))
                }
            }
        }
    }
}

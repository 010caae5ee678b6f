import ArgumentParser
import WSAMergeKit

extension WSAMerge {
    struct Convert: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Rewrite a checkpoint in another format, dtype or sharding.",
            discussion: "Without --dtype every tensor is copied byte for byte. The output format follows -o: *.safetensors, *.npz, *.npy, or a directory / --max-shard-size for shards.")

        @Argument(help: "The checkpoint to convert.")
        var input: String

        @OptionGroup var output: OutputArguments

        @Option(help: "Re-encode float tensors as F64, F32, F16 or BF16 (round to nearest, ties to even).")
        var dtype: TargetDType?

        @Option(name: .customLong("copy-files-from"), help: "A directory output gets this model directory's config, tokenizer, model card and other non-weight files (default: the input's, when it is a model directory).")
        var copyFilesFrom: String?

        @Flag(name: .customLong("no-copy-files"), help: "A directory output gets the weights only.")
        var noCopyFiles = false

        @OptionGroup var common: CommonOptions

        func validate() throws {
            if copyFilesFrom != nil && noCopyFiles { throw ValidationError("--copy-files-from and --no-copy-files contradict each other") }
        }

        func run() throws {
            let input = try common.resolve([input])[0]
            let checkpoint = try common.open([input])[0]
            let options = try output.options()
            let source = ModelDirectoryOutput.source(converting: input, output: options, explicit: copyFilesFrom, disabled: noCopyFiles)
            let directory = try ModelDirectoryOutput(converting: options, dtype: dtype?.dtype, source: source)
            try Converter.convert(checkpoint, to: options, dtype: dtype?.dtype, filter: try common.filter(), jobs: common.workerCount,
                                  directory: directory, progress: Progress.forTerminal(label: "convert", quiet: common.quiet))
        }
    }
}

/// `-o` and the options that shape the written checkpoint.
struct OutputArguments: ParsableArguments {
    @Option(name: .shortAndLong, help: "Output: *.safetensors, *.npz, *.npy, or a directory for shards.")
    var output: String

    @Option(name: .customLong("max-shard-size"), parsing: .unconditional, help: "Write shards of at most this size (5GB, 500MB, bytes; powers of 1000).")
    var maxShardSize: String?

    @Flag(help: "Deflate the members of a .npz output.")
    var compress = false

    @Flag(help: "Replace an existing output.")
    var force = false

    func options() throws -> OutputOptions {
        guard !output.isEmpty else { throw ValidationError("-o needs a path") }
        let maxBytes = try maxShardSize.map { try parseSize($0) }
        return try OutputOptions.inferred(path: output, maxShardBytes: maxBytes, compress: compress, force: force)
    }
}

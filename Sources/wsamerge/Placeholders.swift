import ArgumentParser
extension WSAMerge {
    struct Scope: ParsableCommand {}
    struct Fuse: ParsableCommand {}
    struct Strategies: ParsableCommand {}
}

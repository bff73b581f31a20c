enum RepositoryBench {
    static func run(_ arguments: [String]) { print("repository benchmark: not written yet") }
}

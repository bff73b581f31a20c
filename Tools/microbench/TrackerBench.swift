enum TrackerBench {
    static func run(_ arguments: [String]) { print("tracker benchmark: not written yet") }
}

// Micro-benchmarks (not tests): numbers that BENCHMARKS.md quotes.
//   swift run -c release tessera-microbench tracker [options]
//   swift run -c release tessera-microbench repository [options]
//   tessera-microbench nbd-serve --disk NAME=PATH --socket PATH   (Tools/bench-filter's untracked server)
let arguments = Array(CommandLine.arguments.dropFirst())
switch arguments.first {
case "tracker": TrackerBench.run(Array(arguments.dropFirst()))
case "repository": RepositoryBench.run(Array(arguments.dropFirst()))
case "nbd-serve": await NBDServeBench.run(Array(arguments.dropFirst()))
default:
    print("usage: tessera-microbench tracker|repository|nbd-serve [options]")
}

import ArgumentParser

/// A duration written as `90`, `90s`, `30m`, `2h` or `1d`.
struct Seconds: ExpressibleByArgument, Sendable, CustomStringConvertible {
    var seconds: Double

    init(_ seconds: Double) { self.seconds = seconds }

    init?(argument: String) {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        guard let last = argument.last else { return nil }
        let (number, unit) = units[last].map { (argument.dropLast(), $0) } ?? (Substring(argument), 1)
        guard let n = Double(number), n >= 0, n.isFinite else { return nil }
        seconds = n * unit
    }

    var description: String {
        for (unit, size) in [("d", 86400.0), ("h", 3600), ("m", 60)] where seconds >= size && seconds.truncatingRemainder(dividingBy: size) == 0 {
            return "\(Int(seconds / size))\(unit)"
        }
        return "\(Int(seconds))s"
    }
}

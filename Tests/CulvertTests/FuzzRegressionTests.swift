import CulvertFuzzing
import Foundation
import Testing

/// Every input kept in fixtures/fuzz/<target>/ (seeds, and each crash the fuzzers found, once fixed) runs through its
/// fuzz target in the ordinary test run, so a fixed crash stays fixed without a fuzzer build.
@Suite struct FuzzRegressionTests {
    @Test(arguments: FuzzTarget.allCases)
    func keptInputsRunCleanly(target: FuzzTarget) throws {
        let directory = fixturesDirectory() + "/fuzz/" + target.rawValue
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).filter { !$0.hasPrefix(".") }.sorted()
        #expect(!names.isEmpty, "no inputs in \(directory)")
        for name in names {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + name))
            target.run(Array(bytes))
        }
    }
}

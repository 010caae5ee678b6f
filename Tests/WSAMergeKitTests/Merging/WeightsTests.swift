import Testing
@testable import WSAMergeKit

@Suite struct WeightsTests {
    @Test func normalisedToSumOne() throws {
        #expect(try Weights.normalized([1, 3], method: "wsa") == [0.25, 0.75])
        #expect(try Weights.normalized([0, 2], method: "wsa") == [0, 1])
    }

    @Test func refusesBadWeights() throws {
        for bad in [[-1.0, 2], [0, 0], [.nan, 1], [.infinity, 1]] {
            let error = #expect(throws: WSAMergeError.self) { try Weights.normalized(bad, method: "fisher", tensor: "w") }
            #expect(error?.exitCode == 64 && error?.description.hasPrefix("fisher: weights") == true)
        }
    }
}

@Suite struct ScopeFusionTests {
    let scopes = [Scope(mean: 0.1, std: 0.02), Scope(mean: -0.1, std: 0.04)]
    let w = [0.25, 0.75]

    @Test func fusionRules() {
        let linear = ScopeFusion.linear.fuse(scopes, weights: w)
        #expect(abs(linear.mean - (-0.05)) < 1e-15)
        #expect(abs(linear.std - 0.035) < 1e-15)
        let quadratic = ScopeFusion.quadratic.fuse(scopes, weights: w)
        #expect(abs(quadratic.std - (0.25 * 0.0004 + 0.75 * 0.0016).squareRoot()) < 1e-15)
        let mixture = ScopeFusion.mixture.fuse(scopes, weights: w)
        let variance = 0.25 * (0.0004 + 0.01) + 0.75 * (0.0016 + 0.01) - 0.0025
        #expect(abs(mixture.std - variance.squareRoot()) < 1e-15)
    }

    /// The mixture keeps its precision when the means dwarf the spreads (a LayerNorm weight:
    /// μ ≈ 1e6 or 1, σ ≈ 1e-3 or 2e-6), where Σ w(σ² + μ²) − μ_f² cancels to 0 or noise.
    @Test func mixtureOfLargeMeansKeepsItsSpread() {
        let far = ScopeFusion.mixture.fuse([Scope(mean: 1e6, std: 1e-3), Scope(mean: 1e6, std: 1e-3), Scope(mean: 1e6, std: 1e-3)],
                                           weights: [1.0 / 3, 1.0 / 3, 1.0 / 3])
        #expect(abs(far.std - 1e-3) < 1e-12, "\(far.std)")
        let norm = ScopeFusion.mixture.fuse([Scope(mean: 1, std: 2e-6), Scope(mean: 1 + 1e-6, std: 2e-6)], weights: [0.5, 0.5])
        // σ_f² = 4e-12 + (0.5e-6)²
        let reference = (4e-12 + 0.25e-12).squareRoot()
        #expect(abs(norm.std - reference) < 1e-6 * reference, "\(norm.std) against \(reference)")
    }

    /// A scope that is undefined (no finite values: NaN mean and std) leaves the fused scope
    /// undefined under every rule, never a std of 0.
    @Test func undefinedScopesStayUndefined() {
        for rule in ScopeFusion.allCases {
            let fused = rule.fuse([scopes[0], Scope(mean: .nan, std: .nan)], weights: w)
            #expect(fused.mean.isNaN && fused.std.isNaN, "\(rule)")
        }
    }

    @Test func klDivergence() throws {
        #expect(ScopeFusion.kl(scopes[0], scopes[0]) == 0)
        let kl = try #require(ScopeFusion.kl(Scope(mean: 0, std: 1), Scope(mean: 1, std: 2)))
        // ln 2 + (1 + 1) / 8 − ½
        #expect(abs(kl - (0.6931471805599453 + 0.25 - 0.5)) < 1e-15)
        #expect(ScopeFusion.kl(Scope(mean: 0, std: 0), scopes[0]) == nil)
    }
}

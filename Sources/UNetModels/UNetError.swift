// The errors of the UNet: UNetError for a model that cannot run on its inputs or load its weights, UNetConfigError
// for a configuration (config.json or CompVis YAML) it cannot build.

/// A UNet input (sample, timesteps, context, class labels) or weight folder the model cannot use.
public struct UNetError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}

/// A configuration outside what UNet2DConditionModel implements; the message starts with "UNet config: ".
public struct UNetConfigError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = "UNet config: " + message }
}

// swift-tools-version: 5.10
// LatentDiffusion: latent diffusion models (Rombach et al., CVPR 2022) in Swift, CPU-first.
// Module layers, bottom to top (a module imports only modules below it; docs/architecture.md describes each):
//   CKernels, CMPIShim, CDNNL, CZlib, CPNG, CTurboJPEG: C kernels, the run-time MPI binding, system libraries
//   FileIO (atomic file output, JSON strings);  TensorCore (tensors, autograd, kernels)
//   Checkpoints, Tokenizers, Imaging (file formats, no tensors)
//   NeuralNetwork (torch.nn layers, state-dict loading: TensorCore + Checkpoints);  Diffusion (schedules, schedulers)
//   DiffusersBlocks (diffusers' building blocks: resnet, attention, embeddings, unet_2d_blocks)
//   Autoencoders, UNetModels (diffusers models);  Conditioning (text encoders, class embedder)
//   CompVis (CompVis <-> diffusers rename tables, YAML -> typed configs, CompVis loading, `ldm convert`)
//   Pipelines (generation);  Training (with CMPIShim)
//   Server (`ldm serve`, over Pipelines);  ldm (command line)
import PackageDescription

let optimize: [SwiftSetting] = [.unsafeFlags(["-O"])]

let package = Package(
    name: "LatentDiffusion",
    products: [
        .executable(name: "ldm", targets: ["ldm"]),
        .library(name: "LatentDiffusion", targets: ["FileIO", "TensorCore", "NeuralNetwork", "Checkpoints", "Tokenizers", "Imaging", "Diffusion", "DiffusersBlocks", "Autoencoders", "UNetModels", "Conditioning", "CompVis", "Pipelines", "Training"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        // Hummingbird's own dependencies, declared because Server imports them (resolved to the versions it pins).
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.0.0"),
    ],
    targets: [
        .systemLibrary(name: "CDNNL", path: "Sources/CDNNL", providers: [.apt(["libdnnl-dev"])]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CTurboJPEG", path: "Sources/CTurboJPEG", pkgConfig: "libturbojpeg", providers: [.apt(["libturbojpeg0-dev"])]),

        // Hot vector kernels in C, cloned per ISA (AVX-512 / AVX2+FMA / baseline) and picked at load time.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        // Open MPI's C API bound at run time (dlopen libmpi.so.40): data-parallel training without a build-time MPI.
        .target(name: "CMPIShim", linkerSettings: [.linkedLibrary("dl")]),
        // Atomic file output and JSON string literals, shared by the file formats (Checkpoints, Imaging).
        .target(name: "FileIO"),
        .target(name: "TensorCore", dependencies: ["CDNNL", "CKernels"], swiftSettings: optimize),
        .target(name: "NeuralNetwork", dependencies: ["TensorCore", "Checkpoints"], swiftSettings: optimize),
        .target(name: "Checkpoints", dependencies: ["CZlib", "FileIO"]),
        .target(name: "Tokenizers", dependencies: ["CZlib"], resources: [.copy("Resources")]),
        .target(name: "Imaging", dependencies: ["CPNG", "CTurboJPEG", "CZlib", "FileIO"]),
        .target(name: "Diffusion", dependencies: ["TensorCore"]),
        .target(name: "DiffusersBlocks", dependencies: ["NeuralNetwork", "TensorCore"], swiftSettings: optimize),
        .target(name: "Autoencoders", dependencies: ["DiffusersBlocks", "NeuralNetwork", "Checkpoints", "TensorCore"], swiftSettings: optimize),
        .target(name: "UNetModels", dependencies: ["DiffusersBlocks", "NeuralNetwork", "Checkpoints", "TensorCore"], swiftSettings: optimize),
        .target(name: "Conditioning", dependencies: ["NeuralNetwork", "Checkpoints", "Tokenizers", "TensorCore"], swiftSettings: optimize),
        // CompVis single files and YAMLs: one rename table per component, used by loading and by `ldm convert`.
        .target(name: "CompVis", dependencies: ["Checkpoints", "Tokenizers", "Diffusion", "DiffusersBlocks", "Autoencoders", "UNetModels",
                                                "Conditioning", "NeuralNetwork", "TensorCore"], swiftSettings: optimize),
        .target(name: "Pipelines", dependencies: ["CompVis", "Diffusion", "Autoencoders", "UNetModels", "Conditioning", "Imaging", "Tokenizers", "Checkpoints",
                                                  "NeuralNetwork", "TensorCore"], swiftSettings: optimize),
        .target(name: "Training", dependencies: ["CMPIShim", "Diffusion", "Autoencoders", "UNetModels", "Conditioning", "Imaging", "Checkpoints", "Tokenizers",
                                                 "DiffusersBlocks", "NeuralNetwork", "TensorCore"], swiftSettings: optimize),
        // `ldm serve`: AUTOMATIC1111-compatible HTTP API, job API and web page on Hummingbird 2.
        .target(name: "Server", dependencies: [
            "TensorCore", "Imaging", "Diffusion", "Pipelines", "Checkpoints", "Conditioning", "Autoencoders", "UNetModels",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .executableTarget(name: "ldm", dependencies: [
            "TensorCore", "NeuralNetwork", "Checkpoints", "Tokenizers", "Imaging", "Diffusion", "Autoencoders", "UNetModels", "Conditioning", "CompVis",
            "Pipelines", "Training", "Server",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Yams", package: "Yams"),
        ]),

        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore", "NeuralNetwork"], exclude: ["Fixtures"]),
        .testTarget(name: "CheckpointsTests", dependencies: ["Checkpoints", "CompVis", "UNetModels", "Autoencoders"], exclude: ["Fixtures"]),
        .testTarget(name: "TokenizersTests", dependencies: ["Tokenizers"], exclude: ["Fixtures"]),
        .testTarget(name: "ImagingTests", dependencies: ["Imaging"], exclude: ["Fixtures"]),
        .testTarget(name: "DiffusionTests", dependencies: ["Diffusion", "TensorCore"], exclude: ["Fixtures"]),
        .testTarget(name: "AutoencodersTests", dependencies: ["Autoencoders", "CompVis", "DiffusersBlocks", "NeuralNetwork", "Checkpoints", "TensorCore"], exclude: ["Fixtures"]),
        .testTarget(name: "UNetModelsTests", dependencies: ["UNetModels", "CompVis", "Autoencoders", "DiffusersBlocks", "NeuralNetwork", "Checkpoints", "TensorCore"], exclude: ["Fixtures"]),
        .testTarget(name: "ConditioningTests", dependencies: ["Conditioning", "CompVis", "NeuralNetwork", "Checkpoints", "Tokenizers", "TensorCore"], exclude: ["Fixtures"]),
        .testTarget(name: "PipelinesTests", dependencies: ["Pipelines", "CompVis", "Diffusion", "DiffusersBlocks", "Autoencoders", "UNetModels", "Conditioning", "Imaging",
                                                           "Tokenizers", "Checkpoints", "NeuralNetwork", "TensorCore"], exclude: ["Fixtures"]),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "Pipelines", "Diffusion", "Autoencoders", "UNetModels", "Conditioning", "Imaging",
                                                          "Tokenizers", "Checkpoints", "NeuralNetwork", "TensorCore"], exclude: ["Fixtures"]),
        .testTarget(name: "ServerTests", dependencies: ["Server", "Pipelines", "Imaging", "TensorCore"], exclude: ["Fixtures"]),
    ]
)

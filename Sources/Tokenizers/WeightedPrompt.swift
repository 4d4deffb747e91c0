// Matches AUTOMATIC1111 stable-diffusion-webui modules/sd_hijack_clip.py
// `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line` (and the SD2 pad replacement of `process_tokens`):
// the prompt is parsed with `parse_prompt_attention`, every fragment tokenized without BOS/EOS, and tokens are packed
// into chunks of 75 (+ BOS and EOS = 77) with one weight per token. "BREAK" starts a new chunk; when a chunk is full
// and a comma lies at most `commaPaddingBacktrack` tokens back, the tokens after that comma move to the next chunk.
// Chunks are filled with EOS (weight 1); with a distinct pad token (SD 2.x), everything after the first EOS of a
// chunk becomes the pad token. Textual-inversion embeddings are not handled.
//
// Applying the weights (done by the text-encoder code, sd_emphasis.py `EmphasisOriginal.after_transformers`), per
// chunk with z = encoder output [batch, 77, C] and w = weights [batch, 77]:
//     originalMean = mean(z)            (over all elements)
//     z = z * w[..., None]
//     z = z * (originalMean / mean(z))
// Chunk outputs are then concatenated along the token axis ([batch, 77 * chunks, C]).

public struct WeightedPrompt: Equatable, Sendable {
    /// Token ids, `chunkLength + 2` per chunk, BOS first.
    public var chunks: [[Int]]
    /// One multiplier per token of `chunks`.
    public var weights: [[Float]]
    /// `token_count` of tokenize_line: prompt tokens (full chunks count as 75).
    public var tokenCount: Int

    public init(chunks: [[Int]], weights: [[Float]], tokenCount: Int) {
        self.chunks = chunks
        self.weights = weights
        self.tokenCount = tokenCount
    }

    /// - Parameters:
    ///   - encode: tokenizer without BOS/EOS (e.g. `CLIPTokenizer.encode`).
    ///   - commaTokenID: id of ",</w>" (267 for CLIP), nil to disable comma back-tracking.
    ///   - padTokenID: SD 2.x pad token (0); nil or equal to `eosTokenID` for SD 1.x.
    ///   - commaPaddingBacktrack: the web UI's `comma_padding_backtrack` option (default 20, 0 disables).
    ///   - emphasis: false is the web UI's emphasis "None" (the prompt is one fragment of weight 1).
    public init(_ prompt: String, encode: (String) -> [Int], bosTokenID: Int, eosTokenID: Int, padTokenID: Int? = nil,
                commaTokenID: Int?, chunkLength: Int = 75, commaPaddingBacktrack: Int = 20, emphasis: Bool = true) {
        let parsed = emphasis ? PromptParser.parseAttention(prompt) : [PromptParser.Fragment(prompt, 1.0)]
        var chunks: [[Int]] = [], weights: [[Float]] = []
        var tokens: [Int] = [], multipliers: [Float] = []
        var tokenCount = 0, lastComma = -1
        let length = max(chunkLength, 1)

        func nextChunk(isLast: Bool = false) {
            tokenCount += isLast ? tokens.count : length
            let toAdd = length - tokens.count
            if toAdd > 0 {
                tokens += [Int](repeating: eosTokenID, count: toAdd)
                multipliers += [Float](repeating: 1, count: toAdd)
            }
            var chunk = [bosTokenID] + tokens + [eosTokenID]
            if let pad = padTokenID, pad != eosTokenID, let end = chunk.firstIndex(of: eosTokenID) {
                for k in (end + 1)..<chunk.count { chunk[k] = pad }
            }
            chunks.append(chunk)
            weights.append([1] + multipliers + [1])
            lastComma = -1
            tokens = []
            multipliers = []
        }

        for fragment in parsed {
            if fragment.isBreak {
                nextChunk()
                continue
            }
            let weight = Float(fragment.weight)
            for token in encode(fragment.text) {
                if let comma = commaTokenID, token == comma {
                    lastComma = tokens.count
                } else if commaPaddingBacktrack != 0 && tokens.count == length && lastComma != -1
                            && tokens.count - lastComma <= commaPaddingBacktrack {
                    let breakLocation = lastComma + 1
                    let relocatedTokens = Array(tokens[breakLocation...]), relocatedWeights = Array(multipliers[breakLocation...])
                    tokens.removeSubrange(breakLocation...)
                    multipliers.removeSubrange(breakLocation...)
                    nextChunk()
                    tokens = relocatedTokens
                    multipliers = relocatedWeights
                }
                if tokens.count == length { nextChunk() }
                tokens.append(token)
                multipliers.append(weight)
            }
        }
        if !tokens.isEmpty || chunks.isEmpty { nextChunk(isLast: true) }
        self.init(chunks: chunks, weights: weights, tokenCount: tokenCount)
    }
}

extension CLIPTokenizer {
    /// The web UI's long-prompt / emphasis tokenization with this tokenizer (comma token ",</w>", pad token of
    /// `padTokenID` when it differs from EOS, as for SD 2.x).
    public func weightedPrompt(_ prompt: String, chunkLength: Int = 75, commaPaddingBacktrack: Int = 20,
                               emphasis: Bool = true) -> WeightedPrompt {
        WeightedPrompt(prompt, encode: encode, bosTokenID: bosTokenID, eosTokenID: eosTokenID, padTokenID: padTokenID,
                       commaTokenID: vocabulary[",</w>"], chunkLength: chunkLength,
                       commaPaddingBacktrack: commaPaddingBacktrack, emphasis: emphasis)
    }
}

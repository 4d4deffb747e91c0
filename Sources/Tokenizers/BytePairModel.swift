// Matches the `tokenizers` BPE model (tokenizers/src/models/bpe/{model.rs,word.rs}) as configured by transformers'
// CLIPTokenizer (models/clip/tokenization_clip.py): continuing_subword_prefix "", end_of_word_suffix "</w>",
// fuse_unk false, no dropout. Merges are applied with a priority queue ordered by (rank, position), skipping stale
// entries, exactly like `Word::merge_all`. Results are cached per pre-token (thread-safe cache).
import Foundation

struct BytePairModel {
    let vocabulary: [String: Int]
    let unknownID: Int?
    let endOfWordSuffix: String
    /// (left id, right id) -> (rank, merged id)
    private let merges: [Pair: (rank: Int, id: Int)]
    private let cache = Cache()

    struct Pair: Hashable {
        let left: Int32
        let right: Int32
    }

    final class Cache: @unchecked Sendable {
        private var words: [String: [Int]] = [:]
        private let lock = NSLock()
        func get(_ key: String) -> [Int]? {
            lock.lock()
            defer { lock.unlock() }
            return words[key]
        }
        func set(_ key: String, _ value: [Int]) {
            lock.lock()
            defer { lock.unlock() }
            if words.count > 50_000 { words.removeAll(keepingCapacity: true) }
            words[key] = value
        }
    }

    /// `merges` in rank order. Throws like tokenizers' BpeBuilder when a merge part or result is not in the vocabulary.
    init(vocabulary: [String: Int], merges: [(String, String)], unknownToken: String?, endOfWordSuffix: String = "</w>") throws {
        self.vocabulary = vocabulary
        self.endOfWordSuffix = endOfWordSuffix
        unknownID = unknownToken.flatMap { vocabulary[$0] }
        var table: [Pair: (rank: Int, id: Int)] = [:]
        table.reserveCapacity(merges.count)
        for (rank, (a, b)) in merges.enumerated() {
            guard let aID = vocabulary[a] else { throw TokenizerError.invalidMerges("merge \(rank) part \"\(a)\" is not in the vocabulary") }
            guard let bID = vocabulary[b] else { throw TokenizerError.invalidMerges("merge \(rank) part \"\(b)\" is not in the vocabulary") }
            guard let merged = vocabulary[a + b] else { throw TokenizerError.invalidMerges("merge \(rank) result \"\(a + b)\" is not in the vocabulary") }
            table[Pair(left: Int32(aID), right: Int32(bID))] = (rank, merged)
        }
        self.merges = table
    }

    /// Token ids of one pre-token, given as its byte-level characters.
    func tokenize(_ word: String) -> [Int] {
        if let hit = cache.get(word) { return hit }
        let result = mergeWord(word)
        cache.set(word, result)
        return result
    }

    private struct Symbol {
        var id: Int
        var prev: Int
        var next: Int
        var alive: Bool
    }
    private struct Entry {
        let rank: Int
        let pos: Int
        let newID: Int
    }

    private func mergeWord(_ word: String) -> [Int] {
        let chars = Array(word)
        guard !chars.isEmpty else { return [] }
        var symbols: [Symbol] = []
        symbols.reserveCapacity(chars.count)
        for (i, c) in chars.enumerated() {
            var s = String(c)
            if i == chars.count - 1 { s += endOfWordSuffix }
            // Unknown characters keep id -1 (never merged) and become the unknown token (fuse_unk = false).
            symbols.append(Symbol(id: vocabulary[s] ?? -1, prev: i - 1, next: i + 1 < chars.count ? i + 1 : -1, alive: true))
        }
        var heap = MinHeap()
        func lookup(_ a: Int, _ b: Int) -> (rank: Int, id: Int)? {
            guard a >= 0, b >= 0 else { return nil }
            return merges[Pair(left: Int32(a), right: Int32(b))]
        }
        for i in 0..<(symbols.count - 1) {
            if let m = lookup(symbols[i].id, symbols[i + 1].id) { heap.push(Entry(rank: m.rank, pos: i, newID: m.id)) }
        }
        while let top = heap.pop() {
            let pos = top.pos
            guard symbols[pos].alive, symbols[pos].next >= 0 else { continue }
            let next = symbols[pos].next
            guard let current = lookup(symbols[pos].id, symbols[next].id), current.id == top.newID else { continue }
            symbols[pos].id = top.newID
            symbols[pos].next = symbols[next].next
            symbols[next].alive = false
            if symbols[pos].next >= 0 { symbols[symbols[pos].next].prev = pos }
            let prev = symbols[pos].prev
            if prev >= 0, let m = lookup(symbols[prev].id, symbols[pos].id) { heap.push(Entry(rank: m.rank, pos: prev, newID: m.id)) }
            if symbols[pos].next >= 0, let m = lookup(symbols[pos].id, symbols[symbols[pos].next].id) {
                heap.push(Entry(rank: m.rank, pos: pos, newID: m.id))
            }
        }
        var ids: [Int] = []
        var i = 0
        while i >= 0 && i < symbols.count {
            let id = symbols[i].id
            if id >= 0 { ids.append(id) } else if let unk = unknownID { ids.append(unk) }
            i = symbols[i].next
        }
        return ids
    }

    /// Binary min-heap on (rank, pos), the ordering of tokenizers' `Merge`.
    private struct MinHeap {
        private var items: [Entry] = []
        private static func less(_ a: Entry, _ b: Entry) -> Bool { a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos }
        mutating func push(_ e: Entry) {
            items.append(e)
            var i = items.count - 1
            while i > 0 {
                let parent = (i - 1) / 2
                guard Self.less(items[i], items[parent]) else { break }
                items.swapAt(i, parent)
                i = parent
            }
        }
        mutating func pop() -> Entry? {
            guard let first = items.first else { return nil }
            let last = items.removeLast()
            if items.isEmpty { return first }
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count && Self.less(items[l], items[m]) { m = l }
                if r < items.count && Self.less(items[r], items[m]) { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
            return first
        }
    }
}

import Foundation

/// Runs a parsed template: scopes (a for loop's body is its own, as in Jinja: a `set` inside it
/// does not leak out; `namespace` objects carry state across), filters, tests, and the string, list
/// and dict methods chat templates call. Output is bounded: a template cannot render more than
/// `outputLimit` characters or loop more than `iterationLimit` times.
struct TemplateRenderer {
    var scopes: [[String: TemplateValue]]
    var output = ""
    var iterations = 0
    let outputLimit: Int
    let iterationLimit: Int

    enum Flow { case normal, breakLoop, continueLoop }

    init(globals: [String: TemplateValue], outputLimit: Int = 4 << 20, iterationLimit: Int = 1 << 20) {
        scopes = [globals]
        self.outputLimit = outputLimit
        self.iterationLimit = iterationLimit
    }

    func lookup(_ name: String) -> TemplateValue {
        for scope in scopes.reversed() { if let v = scope[name] { return v } }
        if let builtin = TemplateRenderer.builtin(name) { return builtin }
        return .undefined(name)
    }

    mutating func assign(_ name: String, _ value: TemplateValue) { scopes[scopes.count - 1][name] = value }

    mutating func emit(_ s: String) throws(TemplateError) {
        output += s
        if output.utf8.count > outputLimit { throw TemplateError("the rendered text is longer than \(outputLimit) bytes") }
    }

    mutating func run(_ nodes: [TemplateNode]) throws(TemplateError) -> Flow {
        for node in nodes {
            switch node {
            case .text(let t): try emit(t)
            case .output(let e): try emit(try evaluate(e).rendered)
            case .generation(let body):
                let flow = try run(body)
                if flow != .normal { return flow }
            case .assign(let target, let value):
                let v = try evaluate(value)
                switch target {
                case .names(let names):
                    if names.count == 1 {
                        assign(names[0], v)
                    } else {
                        guard case .list(let items) = v, items.count == names.count else {
                            throw TemplateError("cannot unpack \(v.typeName) into \(names.count) names")
                        }
                        for (n, item) in zip(names, items) { assign(n, item) }
                    }
                case .attribute(let object, let attribute):
                    guard case .namespace(let ns) = lookup(object) else {
                        throw TemplateError("{% set \(object).\(attribute) %}: \(object) is not a namespace")
                    }
                    ns.values[attribute] = v
                }
            case .assignBlock(let name, let body):
                let saved = output
                output = ""
                _ = try run(body)
                let captured = output
                output = saved
                assign(name, .string(captured))
            case .macro(let name, let parameters, let body):
                assign(name, .function(macro(name: name, parameters: parameters, body: body)))
            case .loopBreak: return .breakLoop
            case .loopContinue: return .continueLoop
            case .conditional(let branches, let otherwise):
                var taken = false
                for (condition, body) in branches where try evaluate(condition).truthy {
                    taken = true
                    let flow = try run(body)
                    if flow != .normal { return flow }
                    break
                }
                if !taken {
                    let flow = try run(otherwise)
                    if flow != .normal { return flow }
                }
            case .forLoop(let targets, let iterable, let filter, let body, let otherwise):
                var items = try iterate(try evaluate(iterable))
                if let filter {
                    var kept: [TemplateValue] = []
                    for item in items {
                        scopes.append([:])
                        bind(targets, item)
                        let keep = try evaluate(filter).truthy
                        scopes.removeLast()
                        if keep { kept.append(item) }
                    }
                    items = kept
                }
                if items.isEmpty {
                    let flow = try run(otherwise)
                    if flow != .normal { return flow }
                    continue
                }
                for (n, item) in items.enumerated() {
                    iterations += 1
                    if iterations > iterationLimit { throw TemplateError("more than \(iterationLimit) loop iterations") }
                    scopes.append([:])
                    bind(targets, item)
                    assign("loop", .loop(TemplateLoop(index0: n, length: items.count, previous: n > 0 ? items[n - 1] : nil,
                                                      next: n + 1 < items.count ? items[n + 1] : nil)))
                    let flow = try run(body)
                    scopes.removeLast()
                    if flow == .breakLoop { break }
                }
            }
        }
        return .normal
    }

    mutating func bind(_ targets: [String], _ item: TemplateValue) {
        if targets.count == 1 {
            assign(targets[0], item)
        } else if case .list(let parts) = item {
            for (t, p) in zip(targets, parts) { assign(t, p) }
        }
    }

    func iterate(_ value: TemplateValue) throws(TemplateError) -> [TemplateValue] {
        switch value {
        case .list(let l): return l
        case .dict(let d): return d.map { .string($0.0) }
        case .string(let s): return s.map { .string(String($0)) }
        case .undefined: return []  // Jinja iterates an undefined value as empty
        default: throw TemplateError("'\(value.typeName)' object is not iterable")
        }
    }

    func macro(name: String, parameters: [(String, TemplateExpression?)], body: [TemplateNode]) -> TemplateFunction {
        let globals = scopes[0]
        return TemplateFunction(name: name) { args, kwargs throws(TemplateError) in
            var inner = TemplateRenderer(globals: globals, outputLimit: outputLimit, iterationLimit: iterationLimit)
            inner.scopes.append([:])
            guard args.count <= parameters.count else { throw TemplateError("macro \(name) takes \(parameters.count) arguments, got \(args.count)") }
            for (k, (p, d)) in parameters.enumerated() {
                if k < args.count {
                    inner.assign(p, args[k])
                } else if let kw = kwargs.first(where: { $0.0 == p }) {
                    inner.assign(p, kw.1)
                } else if let d {
                    inner.assign(p, try inner.evaluate(d))
                } else {
                    inner.assign(p, .undefined(p))
                }
            }
            _ = try inner.run(body)
            return .string(inner.output)
        }
    }

    // MARK: - Expressions

    func evaluate(_ e: TemplateExpression) throws(TemplateError) -> TemplateValue {
        switch e {
        case .literal(let l):
            switch l {
            case .string(let s): return .string(s)
            case .integer(let i): return .integer(i)
            case .number(let d): return .number(d)
            case .bool(let b): return .bool(b)
            case .none: return .none
            }
        case .name(let n): return lookup(n)
        case .list(let items): return .list(try items.map { x throws(TemplateError) in try evaluate(x) })
        case .dict(let pairs):
            var out: [(String, TemplateValue)] = []
            for (k, v) in pairs {
                guard case .string(let key) = try evaluate(k) else { throw TemplateError("dict keys must be strings") }
                let value = try evaluate(v)
                if let at = out.firstIndex(where: { $0.0 == key }) { out[at].1 = value } else { out.append((key, value)) }
            }
            return .dict(out)
        case .attribute(let base, let name):
            let object = try evaluate(base)
            return try attribute(object, name)
        case .subscript_(let base, let key):
            return try item(try evaluate(base), try evaluate(key))
        case .slice(let base, let start, let stop, let step):
            return try slice(try evaluate(base), try start.map { x throws(TemplateError) in try evaluate(x) },
                             try stop.map { x throws(TemplateError) in try evaluate(x) }, try step.map { x throws(TemplateError) in try evaluate(x) })
        case .call(let callee, let args, let kwargs):
            let f = try evaluate(callee)
            guard case .function(let function) = f else {
                if case .undefined(let n) = f { throw TemplateError("'\(n)' is undefined (called as a function)") }
                throw TemplateError("'\(f.typeName)' object is not callable")
            }
            let values = try args.map { x throws(TemplateError) in try evaluate(x) }
            let named = try kwargs.map { kv throws(TemplateError) in (kv.0, try evaluate(kv.1)) }
            return try function.call(values, named)
        case .filter(let base, let name, let args, let kwargs):
            let value = try evaluate(base)
            let values = try args.map { x throws(TemplateError) in try evaluate(x) }
            let named = try kwargs.map { kv throws(TemplateError) in (kv.0, try evaluate(kv.1)) }
            return try TemplateFilters.apply(name, value, values, named)
        case .test(let base, let name, let args, let negated):
            let value = try evaluate(base)
            let values = try args.map { x throws(TemplateError) in try evaluate(x) }
            let result = try TemplateFilters.test(name, value, values)
            return .bool(result != negated)
        case .unary(let op, let operand):
            let v = try evaluate(operand)
            switch op {
            case "not": return .bool(!v.truthy)
            case "-":
                if case .integer(let i) = v { return .integer(-i) }
                if case .number(let d) = v { return .number(-d) }
                throw TemplateError("bad operand type for unary -: '\(v.typeName)'")
            default: return v
            }
        case .binary(let op, let l, let r):
            if op == "and" { let a = try evaluate(l); return a.truthy ? try evaluate(r) : a }
            if op == "or" { let a = try evaluate(l); return a.truthy ? a : try evaluate(r) }
            return try TemplateRenderer.binary(op, try evaluate(l), try evaluate(r))
        case .conditional(let value, let condition, let otherwise):
            if try evaluate(condition).truthy { return try evaluate(value) }
            return try otherwise.map { x throws(TemplateError) in try evaluate(x) } ?? .undefined("conditional")
        }
    }

    func attribute(_ object: TemplateValue, _ name: String) throws(TemplateError) -> TemplateValue {
        if case .undefined(let n) = object { throw TemplateError("'\(n)' is undefined (reading .\(name))") }
        if case .loop(let loop) = object, let v = loop.attribute(name) { return v }
        if let method = TemplateMethods.method(object, name) { return .function(method) }
        if let v = object.member(name) { return v }
        return .undefined("\(name)")
    }

    func item(_ object: TemplateValue, _ key: TemplateValue) throws(TemplateError) -> TemplateValue {
        switch (object, key) {
        case (.undefined(let n), _): throw TemplateError("'\(n)' is undefined (reading [\(key.repr)])")
        case (.list(let l), .integer(let i)):
            let k = i < 0 ? l.count + i : i
            return k >= 0 && k < l.count ? l[k] : .undefined("[\(i)]")
        case (.string(let s), .integer(let i)):
            let chars = Array(s)
            let k = i < 0 ? chars.count + i : i
            return k >= 0 && k < chars.count ? .string(String(chars[k])) : .undefined("[\(i)]")
        case (_, .string(let name)):
            if let v = object.member(name) { return v }
            if case .loop(let loop) = object, let v = loop.attribute(name) { return v }
            return .undefined(name)
        default:
            return .undefined("[\(key.repr)]")
        }
    }

    func slice(_ object: TemplateValue, _ start: TemplateValue?, _ stop: TemplateValue?, _ step: TemplateValue?) throws(TemplateError) -> TemplateValue {
        func int(_ v: TemplateValue?) throws(TemplateError) -> Int? {
            switch v {
            case nil, .none?, .undefined?: return nil
            case .integer(let i)?: return i
            default: throw TemplateError("slice indices must be integers")
            }
        }
        let stride = try int(step) ?? 1
        guard stride != 0 else { throw TemplateError("slice step cannot be zero") }
        func pick<T>(_ items: [T]) throws(TemplateError) -> [T] {
            let n = items.count
            func clamp(_ v: Int?, _ fallback: Int) -> Int {
                guard var v else { return fallback }
                if v < 0 { v += n }
                return stride > 0 ? min(max(v, 0), n) : min(max(v, -1), n - 1)
            }
            let from = clamp(try int(start), stride > 0 ? 0 : n - 1)
            let to = clamp(try int(stop), stride > 0 ? n : -1)
            var out: [T] = []
            var k = from
            while stride > 0 ? k < to : k > to {
                out.append(items[k])
                k += stride
            }
            return out
        }
        switch object {
        case .list(let l): return .list(try pick(l))
        case .string(let s): return .string(String(try pick(Array(s))))
        case .undefined(let n): throw TemplateError("'\(n)' is undefined (sliced)")
        default: throw TemplateError("'\(object.typeName)' object cannot be sliced")
        }
    }

    static func binary(_ op: String, _ a: TemplateValue, _ b: TemplateValue) throws(TemplateError) -> TemplateValue {
        switch op {
        case "==": return .bool(TemplateValue.equal(a, b))
        case "!=": return .bool(!TemplateValue.equal(a, b))
        case "~": return .string(a.rendered + b.rendered)
        case "in", "not in":
            let found: Bool
            switch b {
            case .string(let s):
                guard case .string(let needle) = a else { throw TemplateError("'in <string>' requires a string as left operand, not \(a.typeName)") }
                found = needle.isEmpty || Array(s.utf8).containsSubsequence(Array(needle.utf8))
            case .list(let l): found = l.contains { TemplateValue.equal($0, a) }
            case .dict(let d):
                guard case .string(let key) = a else { found = false; break }
                found = d.contains { $0.0 == key }
            case .undefined(let n): throw TemplateError("'\(n)' is undefined (right of 'in')")
            default: throw TemplateError("argument of type '\(b.typeName)' is not iterable")
            }
            return .bool(op == "in" ? found : !found)
        case "<", ">", "<=", ">=":
            let order: Int
            if case .string(let x) = a, case .string(let y) = b {
                order = x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars) ? -1 : (Array(x.unicodeScalars) == Array(y.unicodeScalars) ? 0 : 1)
            } else if let x = a.numeric, let y = b.numeric {
                order = x < y ? -1 : (x == y ? 0 : 1)
            } else {
                throw TemplateError("'\(op)' not supported between '\(a.typeName)' and '\(b.typeName)'")
            }
            switch op {
            case "<": return .bool(order < 0)
            case ">": return .bool(order > 0)
            case "<=": return .bool(order <= 0)
            default: return .bool(order >= 0)
            }
        case "+":
            switch (a, b) {
            case (.string(let x), .string(let y)): return .string(x + y)
            case (.list(let x), .list(let y)): return .list(x + y)
            case (.integer(let x), .integer(let y)): return .integer(x &+ y)
            default:
                if let x = a.numeric, let y = b.numeric, !(a.isString || b.isString) { return .number(x + y) }
                throw TemplateError("unsupported operand types for +: '\(a.typeName)' and '\(b.typeName)'")
            }
        case "-", "*", "/", "//", "%", "**":
            if op == "*", case .string(let s) = a, case .integer(let n) = b { return .string(String(repeating: s, count: max(0, min(n, 1 << 16)))) }
            guard let x = a.numeric, let y = b.numeric else {
                throw TemplateError("unsupported operand types for \(op): '\(a.typeName)' and '\(b.typeName)'")
            }
            let ints: (Int, Int)? = { if case .integer(let i) = a, case .integer(let j) = b { return (i, j) }; return nil }()
            switch op {
            case "-": if let (i, j) = ints { return .integer(i &- j) }; return .number(x - y)
            case "*": if let (i, j) = ints { return .integer(i &* j) }; return .number(x * y)
            case "/": guard y != 0 else { throw TemplateError("division by zero") }; return .number(x / y)
            case "//":
                guard y != 0 else { throw TemplateError("integer division by zero") }
                if let (i, j) = ints { return .integer(Int((Double(i) / Double(j)).rounded(.down))) }
                return .number((x / y).rounded(.down))
            case "%":
                guard y != 0 else { throw TemplateError("modulo by zero") }
                if let (i, j) = ints { let r = i % j; return .integer(r != 0 && (r < 0) != (j < 0) ? r + j : r) }
                return .number(x - y * (x / y).rounded(.down))
            default:
                if let (i, j) = ints, j >= 0, j < 64 {
                    var result = 1
                    for _ in 0..<j { result = result &* i }
                    return .integer(result)
                }
                return .number(pow(x, y))
            }
        default:
            throw TemplateError("operator \(op)")
        }
    }

    /// Globals every chat template may call.
    static func builtin(_ name: String) -> TemplateValue? {
        switch name {
        case "raise_exception":
            return .function(TemplateFunction(name: name) { args, _ throws(TemplateError) in
                throw TemplateError("the template raised: \(args.first?.rendered ?? "")")
            })
        case "namespace":
            return .function(TemplateFunction(name: name) { args, kwargs throws(TemplateError) in
                var values: [String: TemplateValue] = [:]
                if case .dict(let d)? = args.first { for (k, v) in d { values[k] = v } }
                for (k, v) in kwargs { values[k] = v }
                return .namespace(TemplateNamespace(values))
            })
        case "range":
            return .function(TemplateFunction(name: name) { args, _ throws(TemplateError) in
                let ints = args.compactMap { v -> Int? in if case .integer(let i) = v { return i } else { return nil } }
                guard ints.count == args.count, (1...3).contains(ints.count) else { throw TemplateError("range() takes 1 to 3 integers") }
                let (start, stop, step) = ints.count == 1 ? (0, ints[0], 1) : (ints[0], ints[1], ints.count == 3 ? ints[2] : 1)
                guard step != 0 else { throw TemplateError("range() step cannot be zero") }
                let count = step > 0 ? max(0, (stop - start + step - 1) / step) : max(0, (start - stop - step - 1) / -step)
                guard count <= 1 << 20 else { throw TemplateError("range() of \(count) items") }
                return .list((0..<count).map { .integer(start + $0 * step) })
            })
        case "strftime_now":
            return .function(TemplateFunction(name: name) { args, _ throws(TemplateError) in
                guard case .string(let format)? = args.first else { throw TemplateError("strftime_now() takes a format string") }
                var t = time(nil)
                var parts = tm()
                gmtime_r(&t, &parts)
                var buffer = [Int8](repeating: 0, count: 256)
                let n = strftime(&buffer, buffer.count, format, &parts)
                return .string(String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
            })
        default:
            return nil
        }
    }
}

extension TemplateValue {
    var isString: Bool { if case .string = self { true } else { false } }
}

extension Array where Element == UInt8 {
    func containsSubsequence(_ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty else { return true }
        guard needle.count <= count else { return false }
        for i in 0...(count - needle.count) where self[i] == needle[0] && self[i..<i + needle.count].elementsEqual(needle) { return true }
        return false
    }
}

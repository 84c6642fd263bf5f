import Foundation

/// The filters (`x | f`), tests (`x is t`) and methods (`s.split(…)`) chat templates use, as Jinja2
/// and Python define them. Anything else is an error naming it.
enum TemplateFilters {
    static func argument(_ name: String, _ position: Int, _ args: [TemplateValue], _ kwargs: [(String, TemplateValue)]) -> TemplateValue? {
        if let kw = kwargs.first(where: { $0.0 == name }) { return kw.1 }
        return position < args.count ? args[position] : nil
    }

    static func string(_ v: TemplateValue, _ filter: String) throws(TemplateError) -> String {
        if case .string(let s) = v { return s }
        if case .undefined = v { return "" }
        return v.rendered
    }

    static func apply(_ name: String, _ value: TemplateValue, _ args: [TemplateValue], _ kwargs: [(String, TemplateValue)]) throws(TemplateError) -> TemplateValue {
        switch name {
        case "tojson":
            var indent: Int? = nil
            if case .integer(let i)? = argument("indent", 0, args, kwargs) { indent = i }
            let sortKeys = argument("sort_keys", 1, args, kwargs)?.truthy ?? false
            return .string(try value.json(indent: indent, sortKeys: sortKeys))
        case "trim":
            return .string(try string(value, name).trimmingPythonWhitespace())
        case "length", "count":
            switch value {
            case .string(let s): return .integer(s.unicodeScalars.count)
            case .list(let l): return .integer(l.count)
            case .dict(let d): return .integer(d.count)
            case .undefined: return .integer(0)
            default: throw TemplateError("object of type '\(value.typeName)' has no length")
            }
        case "first", "last":
            switch value {
            case .list(let l): return (name == "first" ? l.first : l.last) ?? .undefined(name)
            case .string(let s): return (name == "first" ? s.first : s.last).map { .string(String($0)) } ?? .undefined(name)
            default: throw TemplateError("\(name) of a \(value.typeName)")
            }
        case "upper": return .string(try string(value, name).uppercased())
        case "lower": return .string(try string(value, name).lowercased())
        case "capitalize":
            let s = try string(value, name)
            return .string(s.prefix(1).uppercased() + s.dropFirst().lowercased())
        case "title": return .string(try string(value, name).capitalized)
        case "string": return .string(value.rendered)
        case "safe", "e", "escape":
            if name == "safe" { return value }
            return .string(value.rendered.replacingAll("&", with: "&amp;").replacingAll("<", with: "&lt;").replacingAll(">", with: "&gt;")
                .replacingAll("\"", with: "&#34;").replacingAll("'", with: "&#39;"))
        case "default", "d":
            let fallback = argument("default_value", 0, args, kwargs) ?? .string("")
            let boolean = argument("boolean", 1, args, kwargs)?.truthy ?? false
            if value.isUndefined || (boolean && !value.truthy) { return fallback }
            return value
        case "join":
            let separator = argument("d", 0, args, kwargs)?.rendered ?? ""
            var items = try items(value, name)
            if case .string(let attribute)? = argument("attribute", 1, args, kwargs) {
                items = items.map { $0.member(attribute) ?? .undefined(attribute) }
            }
            return .string(items.map(\.rendered).joined(separator: separator))
        case "int":
            switch value {
            case .integer: return value
            case .number(let d): return .integer(Int(d))
            case .bool(let b): return .integer(b ? 1 : 0)
            case .string(let s): return .integer(Int(s.trimmingPythonWhitespace()) ?? Int(Double(s) ?? 0))
            default: return .integer(0)
            }
        case "float":
            if let d = value.numeric { return .number(d) }
            if case .string(let s) = value { return .number(Double(s) ?? 0) }
            return .number(0)
        case "abs":
            if case .integer(let i) = value { return .integer(abs(i)) }
            if let d = value.numeric { return .number(abs(d)) }
            throw TemplateError("abs of a \(value.typeName)")
        case "list": return .list(try items(value, name))
        case "reverse":
            if case .string(let s) = value { return .string(String(s.reversed())) }
            return .list(try items(value, name).reversed())
        case "items":
            guard case .dict(let d) = value else { throw TemplateError("items of a \(value.typeName)") }
            return .list(d.map { .list([.string($0.0), $0.1]) })
        case "replace":
            guard args.count >= 2 else { throw TemplateError("replace needs the old and the new string") }
            return .string(try string(value, name).replacingAll(args[0].rendered, with: args[1].rendered))
        case "map":
            if case .string(let attribute)? = argument("attribute", -1, [], kwargs) {
                return .list(try items(value, name).map { $0.member(attribute) ?? .undefined(attribute) })
            }
            guard case .string(let filter)? = args.first else { throw TemplateError("map needs a filter name or attribute=") }
            var mapped: [TemplateValue] = []
            for v in try items(value, name) { mapped.append(try apply(filter, v, Array(args.dropFirst()), [])) }
            return .list(mapped)
        case "selectattr", "rejectattr":
            guard case .string(let attribute)? = args.first else { throw TemplateError("\(name) needs an attribute name") }
            let keep = name == "selectattr"
            var kept: [TemplateValue] = []
            for item in try items(value, name) {
                let member = item.member(attribute) ?? .undefined(attribute)
                let passed: Bool
                if args.count >= 2, case .string(let testName) = args[1] {
                    passed = try test(testName, member, Array(args.dropFirst(2)))
                } else {
                    passed = member.truthy
                }
                if passed == keep { kept.append(item) }
            }
            return .list(kept)
        case "select", "reject":
            let keep = name == "select"
            var kept: [TemplateValue] = []
            for item in try items(value, name) {
                let passed: Bool
                if case .string(let testName)? = args.first { passed = try test(testName, item, Array(args.dropFirst())) } else { passed = item.truthy }
                if passed == keep { kept.append(item) }
            }
            return .list(kept)
        case "unique":
            var out: [TemplateValue] = []
            for item in try items(value, name) where !out.contains(where: { TemplateValue.equal($0, item) }) { out.append(item) }
            return .list(out)
        case "wordcount":
            return .integer(try string(value, name).split(whereSeparator: \.isWhitespace).count)
        default:
            throw TemplateError("the filter '\(name)' is not supported")
        }
    }

    static func items(_ value: TemplateValue, _ filter: String) throws(TemplateError) -> [TemplateValue] {
        switch value {
        case .list(let l): return l
        case .dict(let d): return d.map { .string($0.0) }
        case .string(let s): return s.map { .string(String($0)) }
        case .undefined: return []
        default: throw TemplateError("\(filter) of a \(value.typeName)")
        }
    }

    static func test(_ name: String, _ value: TemplateValue, _ args: [TemplateValue]) throws(TemplateError) -> Bool {
        switch name {
        case "defined": return !value.isUndefined
        case "undefined": return value.isUndefined
        case "none": if case .none = value { return true } else { return false }
        case "true": if case .bool(true) = value { return true } else { return false }
        case "false": if case .bool(false) = value { return true } else { return false }
        case "boolean": if case .bool = value { return true } else { return false }
        case "string": return value.isString
        case "number": switch value { case .integer, .number: return true; default: return false }
        case "integer": if case .integer = value { return true } else { return false }
        case "float": if case .number = value { return true } else { return false }
        case "mapping": if case .dict = value { return true } else { return false }
        case "sequence", "iterable": switch value { case .list, .string, .dict: return true; default: return false }
        case "callable": if case .function = value { return true } else { return false }
        case "lower": return value.isString && value.rendered == value.rendered.lowercased()
        case "upper": return value.isString && value.rendered == value.rendered.uppercased()
        case "odd", "even":
            guard case .integer(let i) = value else { throw TemplateError("'\(name)' test of a \(value.typeName)") }
            return (i % 2 != 0) == (name == "odd")
        case "divisibleby":
            guard case .integer(let i) = value, case .integer(let n)? = args.first, n != 0 else { throw TemplateError("'divisibleby' needs integers") }
            return i % n == 0
        case "equalto", "eq", "==", "sameas": return args.first.map { TemplateValue.equal(value, $0) } ?? false
        case "ne", "!=": return !(args.first.map { TemplateValue.equal(value, $0) } ?? false)
        case "lt", "gt", "le", "ge", "<", ">", "<=", ">=":
            guard let other = args.first else { throw TemplateError("'\(name)' needs a value") }
            let op = ["lt": "<", "gt": ">", "le": "<=", "ge": ">="][name] ?? name
            return try TemplateRenderer.binary(op, value, other).truthy
        case "in":
            guard let other = args.first else { throw TemplateError("'in' needs a container") }
            return try TemplateRenderer.binary("in", value, other).truthy
        default:
            throw TemplateError("the test '\(name)' is not supported")
        }
    }
}

/// Methods on strings and dicts (lists are immutable in transformers' sandbox: no append).
enum TemplateMethods {
    static func method(_ object: TemplateValue, _ name: String) -> TemplateFunction? {
        switch object {
        case .string(let s): return stringMethod(s, name)
        case .dict(let d):
            switch name {
            case "items": return TemplateFunction(name: name) { _, _ in .list(d.map { .list([.string($0.0), $0.1]) }) }
            case "keys": return TemplateFunction(name: name) { _, _ in .list(d.map { .string($0.0) }) }
            case "values": return TemplateFunction(name: name) { _, _ in .list(d.map(\.1)) }
            case "get":
                return TemplateFunction(name: name) { args, _ in
                    guard case .string(let key)? = args.first else { return args.count > 1 ? args[1] : .none }
                    return d.first { $0.0 == key }?.1 ?? (args.count > 1 ? args[1] : .none)
                }
            default: return nil
            }
        default: return nil
        }
    }

    static func stringMethod(_ s: String, _ name: String) -> TemplateFunction? {
        func text(_ args: [TemplateValue], _ k: Int) -> String? {
            if k < args.count, case .string(let t) = args[k] { return t }
            return nil
        }
        switch name {
        case "split":
            return TemplateFunction(name: name) { args, _ throws(TemplateError) in
                var limit = -1
                if args.count > 1, case .integer(let n) = args[1] { limit = n }
                if let separator = text(args, 0) {
                    guard !separator.isEmpty else { throw TemplateError("split: empty separator") }
                    return .list(s.pythonSplit(separator, limit: limit).map { .string($0) })
                }
                return .list(s.split(whereSeparator: { $0.isWhitespace }).map { .string(String($0)) })
            }
        case "rsplit":
            return TemplateFunction(name: name) { args, _ throws(TemplateError) in
                guard let separator = text(args, 0), !separator.isEmpty else {
                    return .list(s.split(whereSeparator: { $0.isWhitespace }).map { .string(String($0)) })
                }
                var limit = -1
                if args.count > 1, case .integer(let n) = args[1] { limit = n }
                let parts = s.pythonSplit(separator, limit: -1)
                guard limit >= 0, parts.count > limit + 1 else { return .list(parts.map { .string($0) }) }
                let head = parts[0..<(parts.count - limit)].joined(separator: separator)
                return .list(([head] + parts[(parts.count - limit)...]).map { .string($0) })
            }
        case "strip", "lstrip", "rstrip":
            return TemplateFunction(name: name) { args, _ in
                let chars = text(args, 0).map { Set($0.unicodeScalars) }
                return .string(s.pythonStrip(chars, leading: name != "rstrip", trailing: name != "lstrip"))
            }
        case "startswith", "endswith":
            return TemplateFunction(name: name) { args, _ in
                var options: [String] = []
                if let t = text(args, 0) { options = [t] }
                if case .list(let l)? = args.first { options = l.compactMap { if case .string(let t) = $0 { t } else { nil } } }
                let bytes = Array(s.utf8)
                return .bool(options.contains { o in
                    let ob = Array(o.utf8)
                    return ob.count <= bytes.count && (name == "startswith" ? Array(bytes.prefix(ob.count)) == ob : Array(bytes.suffix(ob.count)) == ob)
                })
            }
        case "upper": return TemplateFunction(name: name) { _, _ in .string(s.uppercased()) }
        case "lower": return TemplateFunction(name: name) { _, _ in .string(s.lowercased()) }
        case "title": return TemplateFunction(name: name) { _, _ in .string(s.capitalized) }
        case "capitalize": return TemplateFunction(name: name) { _, _ in .string(s.prefix(1).uppercased() + s.dropFirst().lowercased()) }
        case "replace":
            return TemplateFunction(name: name) { args, _ throws(TemplateError) in
                guard let old = text(args, 0), let new = text(args, 1), !old.isEmpty else { throw TemplateError("replace needs two strings") }
                return .string(s.replacingAll(old, with: new))
            }
        case "find":
            return TemplateFunction(name: name) { args, _ in
                guard let needle = text(args, 0) else { return .integer(-1) }
                let hay = Array(s.unicodeScalars), n = Array(needle.unicodeScalars)
                guard n.count <= hay.count else { return .integer(-1) }
                for i in 0...(hay.count - n.count) where Array(hay[i..<i + n.count]) == n { return .integer(i) }
                return .integer(-1)
            }
        case "count":
            return TemplateFunction(name: name) { args, _ in
                guard let needle = text(args, 0), !needle.isEmpty else { return .integer(0) }
                return .integer(s.pythonSplit(needle, limit: -1).count - 1)
            }
        case "join":
            return TemplateFunction(name: name) { args, _ throws(TemplateError) in
                guard case .list(let l)? = args.first else { throw TemplateError("join needs a list") }
                return .string(l.map(\.rendered).joined(separator: s))
            }
        case "format":
            return nil
        default: return nil
        }
    }
}

extension String {
    /// Python's `str.split(sep, maxsplit)`, by scalars.
    func pythonSplit(_ separator: String, limit: Int) -> [String] {
        let hay = Array(unicodeScalars), sep = Array(separator.unicodeScalars)
        var parts: [String] = []
        var start = 0, i = 0
        while i + sep.count <= hay.count, limit < 0 || parts.count < limit {
            if Array(hay[i..<i + sep.count]) == sep {
                parts.append(Normalizer.string(hay[start..<i].map(\.value)))
                i += sep.count
                start = i
            } else {
                i += 1
            }
        }
        parts.append(Normalizer.string(hay[start...].map(\.value)))
        return parts
    }

    /// Python's `str.strip([chars])`: whitespace, or any of `chars`.
    func pythonStrip(_ chars: Set<Unicode.Scalar>?, leading: Bool, trailing: Bool) -> String {
        var scalars = Array(unicodeScalars)
        let strip: (Unicode.Scalar) -> Bool = { chars?.contains($0) ?? $0.properties.isWhitespace }
        if trailing { while let last = scalars.last, strip(last) { scalars.removeLast() } }
        if leading { var k = 0; while k < scalars.count, strip(scalars[k]) { k += 1 }; scalars.removeFirst(k) }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: scalars)
        return String(out)
    }

    func trimmingPythonWhitespace() -> String { pythonStrip(nil, leading: true, trailing: true) }
}

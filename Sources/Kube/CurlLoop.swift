import CCurl
import Foundation

/// One HTTP transfer on a `CurlLoop`: the easy handle, its header list, and what to do with the bytes
/// as they arrive. Every callback runs on the loop's thread.
final class CurlTransfer: @unchecked Sendable {
    let easy: UnsafeMutableRawPointer
    /// Set by `cancel` from any thread (under the loop's lock); read by the loop before it starts the transfer.
    fileprivate var cancelRequested = false
    fileprivate var finished = false
    private var headerList: UnsafeMutablePointer<curl_slist>?
    private var connectToList: UnsafeMutablePointer<curl_slist>?
    private let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
    /// Called with each response header line (status lines included), without the line break.
    var onHeaderLine: (String) -> Void = { _ in }
    /// Called with each piece of the body; returning false aborts the transfer.
    var onBody: (UnsafeRawBufferPointer) -> Bool = { _ in true }
    /// Called once, when the transfer ends: the HTTP status, or why it failed.
    var onFinish: (Result<Int, KubeClientError>) -> Void = { _ in }

    init() throws(KubeClientError) {
        CurlLoop.initializeLibrary()
        guard let easy = curl_easy_init() else { throw .transport("curl_easy_init failed") }
        self.easy = easy
        errorBuffer[0] = 0
        let context = Unmanaged.passUnretained(self).toOpaque()
        eaas_curl_setopt_pointer(easy, CURLOPT_ERRORBUFFER, errorBuffer)
        eaas_curl_setopt_long(easy, CURLOPT_NOSIGNAL, 1)  // threads: no SIGALRM for DNS timeouts
        eaas_curl_setopt_pointer(easy, CURLOPT_WRITEDATA, context)
        eaas_curl_setopt_write_callback(easy) { data, size, count, context in
            let transfer = Unmanaged<CurlTransfer>.fromOpaque(context!).takeUnretainedValue()
            let bytes = size * count
            return transfer.onBody(UnsafeRawBufferPointer(start: data, count: bytes)) ? bytes : 0
        }
        eaas_curl_setopt_pointer(easy, CURLOPT_HEADERDATA, context)
        eaas_curl_setopt_header_callback(easy) { data, size, count, context in
            let transfer = Unmanaged<CurlTransfer>.fromOpaque(context!).takeUnretainedValue()
            let bytes = size * count
            var line = String(decoding: UnsafeRawBufferPointer(start: data, count: bytes), as: UTF8.self)
            while line.hasSuffix("\n") || line.hasSuffix("\r") { line.removeLast() }
            transfer.onHeaderLine(line)
            return bytes
        }
    }

    deinit {
        curl_easy_cleanup(easy)
        if let headerList { curl_slist_free_all(headerList) }
        if let connectToList { curl_slist_free_all(connectToList) }
        errorBuffer.deallocate()
    }

    /// Appends a request header; libcurl keeps a pointer to the list, so it lives as long as the transfer.
    func addHeader(_ line: String) {
        headerList = curl_slist_append(headerList, line)
        eaas_curl_setopt_slist(easy, CURLOPT_HTTPHEADER, headerList)
    }

    /// `CURLOPT_CONNECT_TO` with one `HOST:PORT:CONNECT-TO-HOST:CONNECT-TO-PORT` entry.
    func setConnectTo(_ entry: String) {
        connectToList = curl_slist_append(connectToList, entry)
        eaas_curl_setopt_slist(easy, CURLOPT_CONNECT_TO, connectToList)
    }

    func set(_ option: CURLoption, _ value: Int) { eaas_curl_setopt_long(easy, option, value) }
    func set(_ option: CURLoption, _ value: String) { eaas_curl_setopt_string(easy, option, value) }
    func set(_ option: CURLoption, blob: [UInt8]) {
        blob.withUnsafeBytes { _ = eaas_curl_setopt_blob(easy, option, $0.baseAddress, $0.count) }  // CURL_BLOB_COPY
    }
    /// The request body, copied by libcurl (so the bytes need not outlive this call).
    func setBody(_ body: [UInt8]) {
        eaas_curl_setopt_long(easy, CURLOPT_POSTFIELDSIZE, body.count)
        body.withUnsafeBytes { raw in
            _ = eaas_curl_setopt_pointer(easy, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: raw.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!))
        }
    }

    fileprivate func finish(_ code: CURLcode) {
        guard !finished else { return }
        finished = true
        if code == CURLE_OK {
            var status = 0
            eaas_curl_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &status)
            onFinish(.success(status))
        } else {
            let detail = String(cString: errorBuffer)
            let text = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
            let message = "\(text) (curl error \(code.rawValue))"
            let nothingSent = code == CURLE_COULDNT_CONNECT || code == CURLE_COULDNT_RESOLVE_HOST || code == CURLE_COULDNT_RESOLVE_PROXY
            onFinish(.failure(nothingSent ? .unreachable(message) : code == CURLE_OPERATION_TIMEDOUT ? .timedOut(message) : .transport(message)))
        }
    }

    fileprivate func finishCancelled() {
        guard !finished else { return }
        finished = true
        onFinish(.failure(.cancelled))
    }
}

/// Runs every HTTP transfer of the process on one thread through libcurl's multi interface: one
/// connection cache shared by all requests, and a watch can be cancelled from any task within a
/// fraction of a millisecond (`curl_multi_wakeup`), which the easy interface's progress callback
/// only notices after up to a second. Blocking in libcurl never occupies a Swift concurrency thread.
final class CurlLoop: @unchecked Sendable {
    /// The process-wide loop, started on first use.
    static let shared = CurlLoop()

    private static let libraryInitialized: Bool = {
        curl_global_init(Int(CURL_GLOBAL_DEFAULT))
        return true
    }()
    /// `curl_global_init` is not thread-safe; a Swift static is initialized exactly once.
    static func initializeLibrary() { _ = libraryInitialized }

    private let multi: UnsafeMutableRawPointer
    private let lock = NSLock()
    private var pendingStarts: [CurlTransfer] = []
    private var pendingCancels: [CurlTransfer] = []
    /// Owned by the loop thread: the transfers libcurl is running, retained until they finish.
    private var running: [UnsafeMutableRawPointer: CurlTransfer] = [:]

    private init() {
        Self.initializeLibrary()
        multi = curl_multi_init()
        let thread = Thread { [unowned self] in self.run() }
        thread.name = "eaas-curl"
        thread.start()
    }

    /// Starts `transfer`; its `onFinish` will be called exactly once.
    func start(_ transfer: CurlTransfer) {
        lock.withLock { pendingStarts.append(transfer) }
        curl_multi_wakeup(multi)
    }

    /// Stops `transfer` if it is still running; its `onFinish` gets `.cancelled`.
    func cancel(_ transfer: CurlTransfer) {
        lock.withLock {
            transfer.cancelRequested = true
            pendingCancels.append(transfer)
        }
        curl_multi_wakeup(multi)
    }

    private func run() {
        var stillRunning: Int32 = 0
        while true {
            let (starts, cancels) = lock.withLock {
                defer { pendingStarts.removeAll(); pendingCancels.removeAll() }
                return (pendingStarts, pendingCancels)
            }
            for transfer in starts {
                if lock.withLock({ transfer.cancelRequested }) { transfer.finishCancelled(); continue }
                running[transfer.easy] = transfer
                let code = curl_multi_add_handle(multi, transfer.easy)
                if code != CURLM_OK {
                    running[transfer.easy] = nil
                    transfer.finish(CURLE_FAILED_INIT)
                }
            }
            for transfer in cancels where running[transfer.easy] != nil {
                curl_multi_remove_handle(multi, transfer.easy)
                running[transfer.easy] = nil
                transfer.finishCancelled()
            }
            curl_multi_perform(multi, &stillRunning)
            var queued: Int32 = 0
            while let message = curl_multi_info_read(multi, &queued) {
                guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle else { continue }
                let code = message.pointee.data.result
                curl_multi_remove_handle(multi, easy)
                if let transfer = running.removeValue(forKey: easy) { transfer.finish(code) }
            }
            curl_multi_poll(multi, nil, 0, 1000, nil)
        }
    }
}

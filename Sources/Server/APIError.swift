// Errors the HTTP API returns: a 4xx/5xx status with a JSON body {"error": ..., "detail": ...} naming the offending
// field, as AUTOMATIC1111's API does for its HTTPException (modules/api/api.py api_error handling: {"error", "detail",
// "body", "errors"}); never a stack trace or a server file path.
import Foundation
import HTTPTypes
import Hummingbird

public struct APIError: Error, HTTPResponseError {
    public var status: HTTPResponse.Status
    public var error: String
    public var detail: String
    public var headers: HTTPFields = [:]

    public init(_ status: HTTPResponse.Status, _ error: String, _ detail: String) {
        self.status = status
        self.error = error
        self.detail = detail
    }

    static func badRequest(_ field: String, _ detail: String) -> APIError { APIError(.badRequest, "invalid \(field)", detail) }
    static func unprocessable(_ field: String, _ detail: String) -> APIError {
        APIError(.unprocessableContent, "invalid \(field)", detail)
    }
    static func notFound(_ what: String) -> APIError { APIError(.notFound, "not found", what) }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        let body = (try? JSONSerialization.data(withJSONObject: ["error": error, "detail": detail], options: [.sortedKeys])) ?? Data()
        var h = headers
        h[.contentType] = "application/json"
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}

// The web page at / (WebPage.swift, served from the binary) and the OpenAPI document of the routes.
import Foundation
import Hummingbird
import NIOCore

extension LDMServer {
    func addPageRoutes(_ router: Router<ServerContext>) {
        route(router, .get, "/openapi.json", "This document", tag: "meta") { _, _ in Self.json(self.openAPIDocument()) }
        route(router, .get, "/", "The web page", tag: "meta") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-cache"],
                     body: .init(byteBuffer: ByteBuffer(string: WebPage.html)))
        }
    }
}

// The web page (plain HTML/CSS/JS, no build step), embedded in the binary.
enum WebPage {
    static let html = """
    <!doctype html><html><head><meta charset="utf-8"><title>ldm serve</title></head><body><p>ldm serve</p></body></html>
    """
}

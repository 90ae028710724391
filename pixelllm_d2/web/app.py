"""The web viewer's page (Gradio 6) and its named API endpoints.

Endpoints (gradio_client: `Client(url).predict(handle_file("scene.png"), api_name="/caption")`), each returning
(picture, record): the demo's picture (a PNG file) and the JSON record tools/demo.py writes (docs/DEMO.md):
    /caption   (image)                -> the caption with a point and box per word
    /region    (image, prompt)        -> "x0 y0 x1 y1" boxes (one caption each) or "x y" points (one prompt), ";"-separated
    /refer     (image, text)          -> the box and mask of each expression (one per line)
    /densecap  (image)                -> every detection with its caption
Bad input (no or an unreadable image, an empty expression, a box outside the image, a model without the asked head)
is a gr.Error: one line in the page (and the client's exception), never a traceback.
"""
import logging
import os
from typing import Dict, Optional, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the viewer works offline

import gradio as gr  # noqa: E402

from .prompts import CLICK_MODES, click  # noqa: E402
from .service import INPUT_ERRORS, DemoService, one_line  # noqa: E402
from .viewer import EMPTY_HTML, VIEWER_CSS, VIEWER_JS, preview_html, viewer_html  # noqa: E402

__all__ = ["build_app", "launch"]

logger = logging.getLogger(__name__)

PAGE_CSS = "#viewer { min-height: 320px; }"


def _run(service: DemoService, image: Optional[str], task: str, **prompt):
    """(picture, record) of one task, every failure turned into a one-line gr.Error."""
    try:
        record, picture = service.run(image, task, **prompt)
    except INPUT_ERRORS as e:
        raise gr.Error(one_line(e), print_exception=False) from None
    except Exception as e:  # a bug: the traceback goes to the server's log, the page gets one line
        logger.exception("%s failed", task)
        raise gr.Error(f"internal error ({type(e).__name__}): {one_line(e)}", print_exception=False) from None
    return picture, record


def _readable_image(component: "gr.Image") -> None:
    """Make an upload Pillow cannot open a one-line gr.Error (Gradio opens the file before any handler runs)."""
    preprocess = component.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except Exception as e:
            name = getattr(payload, "orig_name", None) or "image"
            raise gr.Error(f"{name}: cannot read image: {type(e).__name__}", print_exception=False) from None

    component.preprocess = checked


def build_app(service: DemoService, examples: Sequence[str] = (), model_line: str = "") -> "gr.Blocks":
    """The page. `examples`: image paths offered under the image; `model_line`: what the page says the model is."""

    def caption(image: Optional[str]):
        """Caption the image; every word gets a point and a box. Returns (picture, record)."""
        return _run(service, image, "caption")

    def region(image: Optional[str], prompt: str):
        """Caption boxes "x0 y0 x1 y1; ..." (one caption each) or points "x y; ..." (one prompt), original pixels."""
        return _run(service, image, "region", prompt=prompt)

    def refer(image: Optional[str], text: str):
        """The box and mask of each referring expression (one per line)."""
        return _run(service, image, "refer", text=text)

    def densecap(image: Optional[str]):
        """Detect and caption every object."""
        return _run(service, image, "densecap")

    def show(picture, record: Optional[Dict]) -> str:
        return viewer_html(record, picture) if record and picture is not None else EMPTY_HTML

    def on_click(image: Optional[str], mode: str, corner, evt: gr.SelectData):
        # A click finishes a prompt (a point, or a box's second corner) and runs region; a box's first corner is
        # only remembered and shown.
        if evt.index is None:  # Gradio's answer for a click beside the picture
            return (gr.skip(),) * 5
        try:
            prompt, corner = click(mode, float(evt.index[0]), float(evt.index[1]), corner)
            if prompt is None:
                preview = preview_html(service.read(image), "click the opposite corner of the box", corner)
                return gr.skip(), corner, gr.skip(), gr.skip(), preview
        except INPUT_ERRORS as e:
            raise gr.Error(one_line(e), print_exception=False) from None
        picture, record = _run(service, image, "region", prompt=prompt)
        return prompt, None, picture, record, viewer_html(record, picture)

    with gr.Blocks(title="PixelLLM viewer", analytics_enabled=False) as app:
        gr.Markdown("## PixelLLM: a location for every word\n" + (f"<small>{model_line}</small>" if model_line else ""))
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="image (click on it: a region prompt)",
                                 elem_id="image-input", height=300)
                _readable_image(image)
                corner = gr.State(None)
                with gr.Tabs():
                    with gr.Tab("Caption"):
                        gr.Markdown("The caption with a point and a box for every word; hover or click a word.")
                        caption_btn = gr.Button("Caption", variant="primary", elem_id="caption-btn")
                    with gr.Tab("Region"):
                        mode = gr.Radio(list(CLICK_MODES), value="box", label="a click on the image gives",
                                        info="box: two clicks are its corners; point: one click", elem_id="click-mode")
                        prompt = gr.Textbox(label="prompt (original pixels)", placeholder="x0 y0 x1 y1  or  x y;  ';' between several",
                                            elem_id="region-prompt")
                        region_btn = gr.Button("Caption the region", variant="primary", elem_id="region-btn")
                    with gr.Tab("Refer"):
                        text = gr.Textbox(label="referring expression (one per line)", value="the red circle", lines=1, elem_id="refer-text")
                        refer_btn = gr.Button("Find it", variant="primary", elem_id="refer-btn")
                    with gr.Tab("Dense captions"):
                        gr.Markdown("Every object the model detects, with its caption; hover or click one.")
                        densecap_btn = gr.Button("Detect and caption", variant="primary", elem_id="densecap-btn")
                if examples:
                    gr.Examples([[p] for p in examples], inputs=[image], label="examples", examples_per_page=12)
            with gr.Column(scale=3, min_width=400):
                viewer = gr.HTML(EMPTY_HTML, css_template=VIEWER_CSS, js_on_load=VIEWER_JS, elem_id="viewer")
                with gr.Accordion("the API's answer: the demo's picture and JSON", open=False):
                    picture = gr.Image(type="numpy", format="png", label="picture", interactive=False, elem_id="picture")
                    record = gr.JSON(label="JSON (as tools/demo.py writes it)", elem_id="record")

        for btn, fn, inputs in ((caption_btn, caption, [image]), (region_btn, region, [image, prompt]),
                                (refer_btn, refer, [image, text]), (densecap_btn, densecap, [image])):
            btn.click(fn, inputs, [picture, record], api_name=fn.__name__).success(
                show, [picture, record], [viewer], api_visibility="private")
        text.submit(refer, [image, text], [picture, record], api_visibility="private").success(
            show, [picture, record], [viewer], api_visibility="private")
        prompt.submit(region, [image, prompt], [picture, record], api_visibility="private").success(
            show, [picture, record], [viewer], api_visibility="private")
        image.select(on_click, [image, mode, corner], [prompt, corner, picture, record, viewer], api_visibility="private")
        # Another image: the old result and a half-clicked box no longer apply.
        image.change(lambda: (None, EMPTY_HTML, None, None), None, [corner, viewer, picture, record], api_visibility="private")
    app.queue(default_concurrency_limit=1)
    return app


def launch(app: "gr.Blocks", host: str = "127.0.0.1", port: Optional[int] = None, block: bool = True, quiet: bool = False):
    """Serve `app` on http://host:port (Gradio's default port when None). `block=False` returns once the server is up
    (`app.close()` stops it)."""
    return app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, share=False, inbrowser=False,
                      show_error=False, quiet=quiet, css=PAGE_CSS, theme=gr.themes.Default(), footer_links=["api"], run_history=False)

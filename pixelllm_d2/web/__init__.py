"""The interactive web viewer of tools/web_demo.py (Gradio, the `web` extra).

    prompts.py   region prompts as text ("x0 y0 x1 y1; ..." boxes or "x y; ..." points) and clicks on the image
    service.py   PixelLLMPredictor behind a lock: (image, task, prompt) -> the demo's JSON record and picture
    viewer.py    the page's picture as HTML: hovering or clicking a word (a detection) highlights its point and
                 box (its box) over the picture the demo draws
    examples.py  the example images (fresh shapes scenes, scikit-image's photos)
    app.py       the Gradio page and its named API endpoints /caption, /region, /refer, /densecap

Only app.py imports Gradio; the other modules are plain Python and tested without a server.
"""

# A contact sheet of judged samples, as docs/results/shapes-samples.png: one row per prompt listed in PROMPTS_TXT (in
# that order), its 4 samples NNNNN-1..4.png from SAMPLES_DIR (NNNNN = the prompt's line in ALL_PROMPTS_TXT), each
# enlarged 2x.
# Run: /work/venv/bin/python experiments/shapes22/contact_sheet.py PROMPTS_TXT ALL_PROMPTS_TXT SAMPLES_DIR OUT.png
import sys
from PIL import Image

rows = [l.strip() for l in open(sys.argv[1]) if l.strip()]
allp = [l.strip() for l in open(sys.argv[2])]
sheet = None
for r, p in enumerate(rows):
    i = allp.index(p)
    for k in range(4):
        im = Image.open(f"{sys.argv[3]}/{i:05d}-{k + 1}.png").convert("RGB")
        im = im.resize((im.width * 2, im.height * 2), Image.BILINEAR)
        if sheet is None:
            sheet = Image.new("RGB", (4 * im.width, len(rows) * im.height), "white")
        sheet.paste(im, (k * im.width, r * im.height))
sheet.save(sys.argv[4])
print("wrote", sys.argv[4], sheet.size)

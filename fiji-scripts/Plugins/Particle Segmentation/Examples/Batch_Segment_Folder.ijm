// Batch Segment Folder: the whole folder in one command, writing the same files as
// `particleseg segment` (labels, mask, probability, ROI set, particle table, overview) and summary.csv.
//   particleseg fiji run-macro Batch_Segment_Folder.ijm input=/data/sem output=/data/out model=default
// Arguments (key=value): input, output, model, threshold.

args = getArgument();
input = call("ij.Macro.getValue", args, "input", "");
output = call("ij.Macro.getValue", args, "output", "");
model = call("ij.Macro.getValue", args, "model", "default");
threshold = call("ij.Macro.getValue", args, "threshold", "0.5");
if (input == "") input = getDirectory("Choose the folder of SEM images");
if (output == "") output = getDirectory("Choose the output folder");
run("Batch Segment Folder...", "input=[" + input + "] output=[" + output + "] model=[" + model + "] threshold=" + threshold
    + " split seed_level=0.50 split_level=1 min_size=15 fill_holes exclude_border crop_rows=auto overview");

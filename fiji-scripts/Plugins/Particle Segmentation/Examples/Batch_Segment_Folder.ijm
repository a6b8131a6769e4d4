// Batch Segment Folder: the whole folder in one command, writing the same files as
// `particleseg segment` (labels, mask, probability, ROI set, particle table, overview) and summary.csv.
//   particleseg fiji run-macro Batch_Segment_Folder.ijm input=/data/sem output=/data/out model=default
// Arguments (key=value): input, output, and any parameter of Batch Segment Folder... (model,
// threshold, seed_level, min_size, ...; see docs/fiji.md). A parameter left out takes the model
// bundle's default, so this macro gives what `particleseg segment` gives with the same options.

args = getArgument();
input = call("ij.Macro.getValue", args, "input", "");
output = call("ij.Macro.getValue", args, "output", "");
if (input == "") input = getDirectory("Choose the folder of SEM images");
if (output == "") output = getDirectory("Choose the output folder");
parameters = replace(" " + args, "\\s(input|output)=(\\[[^\\]]*\\]|\\S*)", "");
run("Batch Segment Folder...", "input=[" + input + "] output=[" + output + "]" + parameters);

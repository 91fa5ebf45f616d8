"""Triton's model configuration protobuf (`inference.ModelConfig`, the schema of config.pbtxt), without tritonclient.

MODEL_CONFIG_PROTO is the serialized FileDescriptorProto of Triton's `model_config.proto`, copied verbatim from
tritonclient 2.73.0 (`tritonclient/grpc/model_config_pb2.py`, the argument of `AddSerializedFile`; Copyright
NVIDIA CORPORATION & AFFILIATES, BSD-3-Clause). tritonclient itself is not a dependency: importing its pb2
module runs `tritonclient.grpc`, which needs grpcio, and its base install pins ml-dtypes<=0.5.4 against onnx.
The message classes are built at run time in a private descriptor pool, so they never clash with a
tritonclient loaded in the same process. To refresh, replace the bytes with those of a newer tritonclient
wheel.
"""

from __future__ import annotations

import functools
from typing import Any

MODEL_CONFIG_PROTO = (
    b'\n\x12model_config.proto\x12\tinference"\x96\x01\n\x10ModelRateLimiter\x127\n\tresources\x18\x01 \x03('
    b"\x0b2$.inference.ModelRateLimiter.Resource\x12\x10\n\x08priority\x18\x02 \x01(\r\x1a7\n\x08Resource\x12"
    b'\x0c\n\x04name\x18\x01 \x01(\t\x12\x0e\n\x06global\x18\x02 \x01(\x08\x12\r\n\x05count\x18\x03 \x01(\r"'
    b'\x87\x04\n\x12ModelInstanceGroup\x12\x0c\n\x04name\x18\x01 \x01(\t\x120\n\x04kind\x18\x04 \x01(\x0e2".inf'
    b"erence.ModelInstanceGroup.Kind\x12\r\n\x05count\x18\x02 \x01(\x05\x121\n\x0crate_limiter\x18\x06 \x01("
    b"\x0b2\x1b.inference.ModelRateLimiter\x12\x0c\n\x04gpus\x18\x03 \x03(\x05\x12H\n\x11secondary_devices\x18"
    b"\x08 \x03(\x0b2-.inference.ModelInstanceGroup.SecondaryDevice\x12\x0f\n\x07profile\x18\x05 \x03(\t\x12"
    b"\x0f\n\x07passive\x18\x07 \x01(\x08\x12\x13\n\x0bhost_policy\x18\t \x01(\t\x1a\x9c\x01\n\x0fSecondaryDevi"
    b"ce\x12O\n\x04kind\x18\x01 \x01(\x0e2A.inference.ModelInstanceGroup.SecondaryDevice.SecondaryDeviceKind"
    b'\x12\x11\n\tdevice_id\x18\x02 \x01(\x03"%\n\x13SecondaryDeviceKind\x12\x0e\n\nKIND_NVDLA\x10\x00"A\n\x04K'
    b"ind\x12\r\n\tKIND_AUTO\x10\x00\x12\x0c\n\x08KIND_GPU\x10\x01\x12\x0c\n\x08KIND_CPU\x10\x02\x12\x0e\n\nKIN"
    b'D_MODEL\x10\x03"#\n\x12ModelTensorReshape\x12\r\n\x05shape\x18\x01 \x03(\x03"\xd3\x02\n\nModelInput\x12'
    b"\x0c\n\x04name\x18\x01 \x01(\t\x12&\n\tdata_type\x18\x02 \x01(\x0e2\x13.inference.DataType\x12,\n\x06form"
    b"at\x18\x03 \x01(\x0e2\x1c.inference.ModelInput.Format\x12\x0c\n\x04dims\x18\x04 \x03(\x03\x12.\n\x07resha"
    b"pe\x18\x05 \x01(\x0b2\x1d.inference.ModelTensorReshape\x12\x17\n\x0fis_shape_tensor\x18\x06 \x01(\x08\x12"
    b"\x1a\n\x12allow_ragged_batch\x18\x07 \x01(\x08\x12\x10\n\x08optional\x18\x08 \x01(\x08\x12\x1f\n\x17is_no"
    b'n_linear_format_io\x18\t \x01(\x08";\n\x06Format\x12\x0f\n\x0bFORMAT_NONE\x10\x00\x12\x0f\n\x0bFORMAT_NHW'
    b'C\x10\x01\x12\x0f\n\x0bFORMAT_NCHW\x10\x02"\xd3\x01\n\x0bModelOutput\x12\x0c\n\x04name\x18\x01 \x01(\t'
    b"\x12&\n\tdata_type\x18\x02 \x01(\x0e2\x13.inference.DataType\x12\x0c\n\x04dims\x18\x03 \x03(\x03\x12.\n"
    b"\x07reshape\x18\x05 \x01(\x0b2\x1d.inference.ModelTensorReshape\x12\x16\n\x0elabel_filename\x18\x04 \x01("
    b'\t\x12\x17\n\x0fis_shape_tensor\x18\x06 \x01(\x08\x12\x1f\n\x17is_non_linear_format_io\x18\x07 \x01(\x08"'
    b"\xd9\x02\n\nBatchInput\x12(\n\x04kind\x18\x01 \x01(\x0e2\x1a.inference.BatchInput.Kind\x12\x13\n\x0btarge"
    b"t_name\x18\x02 \x03(\t\x12&\n\tdata_type\x18\x03 \x01(\x0e2\x13.inference.DataType\x12\x14\n\x0csource_in"
    b'put\x18\x04 \x03(\t"\xcd\x01\n\x04Kind\x12\x17\n\x13BATCH_ELEMENT_COUNT\x10\x00\x12#\n\x1fBATCH_ACCUMULAT'
    b"ED_ELEMENT_COUNT\x10\x01\x12-\n)BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO\x10\x02\x12$\n BATCH_MAX_ELEMEN"
    b"T_COUNT_AS_SHAPE\x10\x03\x12\x14\n\x10BATCH_ITEM_SHAPE\x10\x04\x12\x1c\n\x18BATCH_ITEM_SHAPE_FLATTEN\x10"
    b'\x05"\x8f\x01\n\x0bBatchOutput\x12\x13\n\x0btarget_name\x18\x01 \x03(\t\x12)\n\x04kind\x18\x02 \x01(\x0e2'
    b'\x1b.inference.BatchOutput.Kind\x12\x14\n\x0csource_input\x18\x03 \x03(\t"*\n\x04Kind\x12"\n\x1eBATCH_SCA'
    b'TTER_WITH_INPUT_SHAPE\x10\x00"\x90\x02\n\x12ModelVersionPolicy\x126\n\x06latest\x18\x01 \x01(\x0b2$.infer'
    b"ence.ModelVersionPolicy.LatestH\x00\x120\n\x03all\x18\x02 \x01(\x0b2!.inference.ModelVersionPolicy.AllH"
    b"\x00\x12:\n\x08specific\x18\x03 \x01(\x0b2&.inference.ModelVersionPolicy.SpecificH\x00\x1a\x1e\n\x06Lates"
    b"t\x12\x14\n\x0cnum_versions\x18\x01 \x01(\r\x1a\x05\n\x03All\x1a\x1c\n\x08Specific\x12\x10\n\x08versions"
    b'\x18\x01 \x03(\x03B\x0f\n\rpolicy_choice"\xfd\r\n\x17ModelOptimizationPolicy\x127\n\x05graph\x18\x01 \x01'
    b"(\x0b2(.inference.ModelOptimizationPolicy.Graph\x12B\n\x08priority\x18\x02 \x01(\x0e20.inference.ModelOpt"
    b"imizationPolicy.ModelPriority\x125\n\x04cuda\x18\x03 \x01(\x0b2'.inference.ModelOptimizationPolicy.Cuda"
    b"\x12X\n\x16execution_accelerators\x18\x04 \x01(\x0b28.inference.ModelOptimizationPolicy.ExecutionAccelera"
    b"tors\x12R\n\x13input_pinned_memory\x18\x05 \x01(\x0b25.inference.ModelOptimizationPolicy.PinnedMemoryBuff"
    b"er\x12S\n\x14output_pinned_memory\x18\x06 \x01(\x0b25.inference.ModelOptimizationPolicy.PinnedMemoryBuffe"
    b"r\x12&\n\x1egather_kernel_buffer_threshold\x18\x07 \x01(\r\x12\x16\n\x0eeager_batching\x18\x08 \x01(\x08"
    b"\x1a\x16\n\x05Graph\x12\r\n\x05level\x18\x01 \x01(\x05\x1a\xba\x05\n\x04Cuda\x12\x0e\n\x06graphs\x18\x01 "
    b"\x01(\x08\x12\x18\n\x10busy_wait_events\x18\x02 \x01(\x08\x12E\n\ngraph_spec\x18\x03 \x03(\x0b21.inferenc"
    b"e.ModelOptimizationPolicy.Cuda.GraphSpec\x12\x1a\n\x12output_copy_stream\x18\x04 \x01(\x08\x1a\xa4\x04\n"
    b"\tGraphSpec\x12\x12\n\nbatch_size\x18\x01 \x01(\x05\x12K\n\x05input\x18\x02 \x03(\x0b2<.inference.ModelOp"
    b"timizationPolicy.Cuda.GraphSpec.InputEntry\x12W\n\x11graph_lower_bound\x18\x03 \x01(\x0b2<.inference.Mode"
    b"lOptimizationPolicy.Cuda.GraphSpec.LowerBound\x1a\x14\n\x05Shape\x12\x0b\n\x03dim\x18\x01 \x03(\x03\x1a"
    b"\xdf\x01\n\nLowerBound\x12\x12\n\nbatch_size\x18\x01 \x01(\x05\x12V\n\x05input\x18\x02 \x03(\x0b2G.infere"
    b"nce.ModelOptimizationPolicy.Cuda.GraphSpec.LowerBound.InputEntry\x1ae\n\nInputEntry\x12\x0b\n\x03key\x18"
    b"\x01 \x01(\t\x12F\n\x05value\x18\x02 \x01(\x0b27.inference.ModelOptimizationPolicy.Cuda.GraphSpec.Shape:"
    b"\x028\x01\x1ae\n\nInputEntry\x12\x0b\n\x03key\x18\x01 \x01(\t\x12F\n\x05value\x18\x02 \x01(\x0b27.inferen"
    b"ce.ModelOptimizationPolicy.Cuda.GraphSpec.Shape:\x028\x01\x1a\xa4\x03\n\x15ExecutionAccelerators\x12g\n"
    b"\x19gpu_execution_accelerator\x18\x01 \x03(\x0b2D.inference.ModelOptimizationPolicy.ExecutionAccelerators"
    b".Accelerator\x12g\n\x19cpu_execution_accelerator\x18\x02 \x03(\x0b2D.inference.ModelOptimizationPolicy.Ex"
    b"ecutionAccelerators.Accelerator\x1a\xb8\x01\n\x0bAccelerator\x12\x0c\n\x04name\x18\x01 \x01(\t\x12h\n\npa"
    b"rameters\x18\x02 \x03(\x0b2T.inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator.Paramete"
    b"rsEntry\x1a1\n\x0fParametersEntry\x12\x0b\n\x03key\x18\x01 \x01(\t\x12\r\n\x05value\x18\x02 \x01(\t:\x028"
    b'\x01\x1a$\n\x12PinnedMemoryBuffer\x12\x0e\n\x06enable\x18\x01 \x01(\x08"I\n\rModelPriority\x12\x14\n\x10P'
    b'RIORITY_DEFAULT\x10\x00\x12\x10\n\x0cPRIORITY_MAX\x10\x01\x12\x10\n\x0cPRIORITY_MIN\x10\x02"\xdb\x01\n'
    b"\x10ModelQueuePolicy\x12A\n\x0etimeout_action\x18\x01 \x01(\x0e2).inference.ModelQueuePolicy.TimeoutActio"
    b"n\x12$\n\x1cdefault_timeout_microseconds\x18\x02 \x01(\x04\x12\x1e\n\x16allow_timeout_override\x18\x03 "
    b'\x01(\x08\x12\x16\n\x0emax_queue_size\x18\x04 \x01(\r"&\n\rTimeoutAction\x12\n\n\x06REJECT\x10\x00\x12\t'
    b'\n\x05DELAY\x10\x01"\x9b\x03\n\x14ModelDynamicBatching\x12\x1c\n\x14preferred_batch_size\x18\x01 \x03('
    b"\x05\x12$\n\x1cmax_queue_delay_microseconds\x18\x02 \x01(\x04\x12\x19\n\x11preserve_ordering\x18\x03 \x01"
    b"(\x08\x12\x17\n\x0fpriority_levels\x18\x04 \x01(\x04\x12\x1e\n\x16default_priority_level\x18\x05 \x01("
    b"\x04\x129\n\x14default_queue_policy\x18\x06 \x01(\x0b2\x1b.inference.ModelQueuePolicy\x12W\n\x15priority_"
    b"queue_policy\x18\x07 \x03(\x0b28.inference.ModelDynamicBatching.PriorityQueuePolicyEntry\x1aW\n\x18Priori"
    b"tyQueuePolicyEntry\x12\x0b\n\x03key\x18\x01 \x01(\x04\x12*\n\x05value\x18\x02 \x01(\x0b2\x1b.inference.Mo"
    b'delQueuePolicy:\x028\x01"\xee\n\n\x15ModelSequenceBatching\x12A\n\x06direct\x18\x03 \x01(\x0b2/.inference'
    b".ModelSequenceBatching.StrategyDirectH\x00\x12A\n\x06oldest\x18\x04 \x01(\x0b2/.inference.ModelSequenceBa"
    b"tching.StrategyOldestH\x00\x12&\n\x1emax_sequence_idle_microseconds\x18\x01 \x01(\x04\x12D\n\rcontrol_inp"
    b"ut\x18\x02 \x03(\x0b2-.inference.ModelSequenceBatching.ControlInput\x125\n\x05state\x18\x05 \x03(\x0b2&.i"
    b"nference.ModelSequenceBatching.State\x12\x1a\n\x12iterative_sequence\x18\x06 \x01(\x08\x1a\xb1\x02\n\x07C"
    b"ontrol\x12;\n\x04kind\x18\x01 \x01(\x0e2-.inference.ModelSequenceBatching.Control.Kind\x12\x18\n\x10int32"
    b"_false_true\x18\x02 \x03(\x05\x12\x17\n\x0ffp32_false_true\x18\x03 \x03(\x02\x12\x17\n\x0fbool_false_true"
    b'\x18\x05 \x03(\x08\x12&\n\tdata_type\x18\x04 \x01(\x0e2\x13.inference.DataType"u\n\x04Kind\x12\x1a\n\x16C'
    b"ONTROL_SEQUENCE_START\x10\x00\x12\x1a\n\x16CONTROL_SEQUENCE_READY\x10\x01\x12\x18\n\x14CONTROL_SEQUENCE_E"
    b"ND\x10\x02\x12\x1b\n\x17CONTROL_SEQUENCE_CORRID\x10\x03\x1aW\n\x0cControlInput\x12\x0c\n\x04name\x18\x01 "
    b"\x01(\t\x129\n\x07control\x18\x02 \x03(\x0b2(.inference.ModelSequenceBatching.Control\x1a\x8a\x01\n\x0cIn"
    b"itialState\x12&\n\tdata_type\x18\x01 \x01(\x0e2\x13.inference.DataType\x12\x0c\n\x04dims\x18\x02 \x03("
    b"\x03\x12\x13\n\tzero_data\x18\x03 \x01(\x08H\x00\x12\x13\n\tdata_file\x18\x04 \x01(\tH\x00\x12\x0c\n\x04n"
    b"ame\x18\x05 \x01(\tB\x0c\n\nstate_data\x1a\xf3\x01\n\x05State\x12\x12\n\ninput_name\x18\x01 \x01(\t\x12"
    b"\x13\n\x0boutput_name\x18\x02 \x01(\t\x12&\n\tdata_type\x18\x03 \x01(\x0e2\x13.inference.DataType\x12\x0c"
    b"\n\x04dims\x18\x04 \x03(\x03\x12D\n\rinitial_state\x18\x05 \x03(\x0b2-.inference.ModelSequenceBatching.In"
    b"itialState\x12(\n use_same_buffer_for_input_output\x18\x06 \x01(\x08\x12\x1b\n\x13use_growable_memory\x18"
    b"\x07 \x01(\x08\x1aX\n\x0eStrategyDirect\x12$\n\x1cmax_queue_delay_microseconds\x18\x01 \x01(\x04\x12 \n"
    b"\x18minimum_slot_utilization\x18\x02 \x01(\x02\x1a\x90\x01\n\x0eStrategyOldest\x12\x1f\n\x17max_candidate"
    b"_sequences\x18\x01 \x01(\x05\x12\x1c\n\x14preferred_batch_size\x18\x02 \x03(\x05\x12$\n\x1cmax_queue_dela"
    b"y_microseconds\x18\x03 \x01(\x04\x12\x19\n\x11preserve_ordering\x18\x04 \x01(\x08B\x11\n\x0fstrategy_choi"
    b'ce"\x95\x03\n\x0fModelEnsembling\x12-\n\x04step\x18\x01 \x03(\x0b2\x1f.inference.ModelEnsembling.Step\x12'
    b"\x1d\n\x15max_inflight_requests\x18\x02 \x01(\r\x1a\xb3\x02\n\x04Step\x12\x12\n\nmodel_name\x18\x01 \x01("
    b"\t\x12\x15\n\rmodel_version\x18\x02 \x01(\x03\x12@\n\tinput_map\x18\x03 \x03(\x0b2-.inference.ModelEnsemb"
    b"ling.Step.InputMapEntry\x12B\n\noutput_map\x18\x04 \x03(\x0b2..inference.ModelEnsembling.Step.OutputMapEn"
    b"try\x12\x17\n\x0fmodel_namespace\x18\x05 \x01(\t\x1a/\n\rInputMapEntry\x12\x0b\n\x03key\x18\x01 \x01(\t"
    b"\x12\r\n\x05value\x18\x02 \x01(\t:\x028\x01\x1a0\n\x0eOutputMapEntry\x12\x0b\n\x03key\x18\x01 \x01(\t\x12"
    b'\r\n\x05value\x18\x02 \x01(\t:\x028\x01"&\n\x0eModelParameter\x12\x14\n\x0cstring_value\x18\x01 \x01(\t"'
    b"\xd9\x02\n\x0bModelWarmup\x12\x0c\n\x04name\x18\x01 \x01(\t\x12\x12\n\nbatch_size\x18\x02 \x01(\r\x122\n"
    b'\x06inputs\x18\x03 \x03(\x0b2".inference.ModelWarmup.InputsEntry\x12\r\n\x05count\x18\x04 \x01(\r\x1a\x97'
    b"\x01\n\x05Input\x12&\n\tdata_type\x18\x01 \x01(\x0e2\x13.inference.DataType\x12\x0c\n\x04dims\x18\x02 "
    b"\x03(\x03\x12\x13\n\tzero_data\x18\x03 \x01(\x08H\x00\x12\x15\n\x0brandom_data\x18\x04 \x01(\x08H\x00\x12"
    b"\x19\n\x0finput_data_file\x18\x05 \x01(\tH\x00B\x11\n\x0finput_data_type\x1aK\n\x0bInputsEntry\x12\x0b\n"
    b'\x03key\x18\x01 \x01(\t\x12+\n\x05value\x18\x02 \x01(\x0b2\x1c.inference.ModelWarmup.Input:\x028\x01".\n'
    b'\x0fModelOperations\x12\x1b\n\x13op_library_filename\x18\x01 \x03(\t"+\n\x16ModelTransactionPolicy\x12'
    b'\x11\n\tdecoupled\x18\x01 \x01(\x08"\xe6\x01\n\x15ModelRepositoryAgents\x126\n\x06agents\x18\x01 \x03('
    b"\x0b2&.inference.ModelRepositoryAgents.Agent\x1a\x94\x01\n\x05Agent\x12\x0c\n\x04name\x18\x01 \x01(\t\x12"
    b"J\n\nparameters\x18\x02 \x03(\x0b26.inference.ModelRepositoryAgents.Agent.ParametersEntry\x1a1\n\x0fParam"
    b'etersEntry\x12\x0b\n\x03key\x18\x01 \x01(\t\x12\r\n\x05value\x18\x02 \x01(\t:\x028\x01"$\n\x12ModelRespon'
    b'seCache\x12\x0e\n\x06enable\x18\x01 \x01(\x08"\xe2\x02\n\x0cModelMetrics\x12=\n\x0emetric_control\x18\x01'
    b" \x03(\x0b2%.inference.ModelMetrics.MetricControl\x1a\x92\x02\n\rMetricControl\x12Q\n\x11metric_identifie"
    b"r\x18\x01 \x01(\x0b26.inference.ModelMetrics.MetricControl.MetricIdentifier\x12S\n\x11histogram_options"
    b'\x18\x02 \x01(\x0b26.inference.ModelMetrics.MetricControl.HistogramOptionsH\x00\x1a"\n\x10MetricIdentifie'
    b"r\x12\x0e\n\x06family\x18\x01 \x01(\t\x1a#\n\x10HistogramOptions\x12\x0f\n\x07buckets\x18\x01 \x03(\x01B"
    b'\x10\n\x0emetric_options"\xf3\n\n\x0bModelConfig\x12\x0c\n\x04name\x18\x01 \x01(\t\x12\x10\n\x08platform'
    b"\x18\x02 \x01(\t\x12\x0f\n\x07backend\x18\x11 \x01(\t\x12\x0f\n\x07runtime\x18\x19 \x01(\t\x125\n\x0evers"
    b"ion_policy\x18\x03 \x01(\x0b2\x1d.inference.ModelVersionPolicy\x12\x16\n\x0emax_batch_size\x18\x04 \x01("
    b"\x05\x12$\n\x05input\x18\x05 \x03(\x0b2\x15.inference.ModelInput\x12&\n\x06output\x18\x06 \x03(\x0b2\x16."
    b"inference.ModelOutput\x12*\n\x0bbatch_input\x18\x14 \x03(\x0b2\x15.inference.BatchInput\x12,\n\x0cbatch_o"
    b'utput\x18\x15 \x03(\x0b2\x16.inference.BatchOutput\x128\n\x0coptimization\x18\x0c \x01(\x0b2".inference.M'
    b"odelOptimizationPolicy\x12;\n\x10dynamic_batching\x18\x0b \x01(\x0b2\x1f.inference.ModelDynamicBatchingH"
    b"\x00\x12=\n\x11sequence_batching\x18\r \x01(\x0b2 .inference.ModelSequenceBatchingH\x00\x129\n\x13ensembl"
    b"e_scheduling\x18\x0f \x01(\x0b2\x1a.inference.ModelEnsemblingH\x00\x125\n\x0einstance_group\x18\x07 \x03("
    b"\x0b2\x1d.inference.ModelInstanceGroup\x12\x1e\n\x16default_model_filename\x18\x08 \x01(\t\x12H\n\x12cc_m"
    b"odel_filenames\x18\t \x03(\x0b2,.inference.ModelConfig.CcModelFilenamesEntry\x12;\n\x0bmetric_tags\x18\n "
    b"\x03(\x0b2&.inference.ModelConfig.MetricTagsEntry\x12:\n\nparameters\x18\x0e \x03(\x0b2&.inference.ModelC"
    b"onfig.ParametersEntry\x12,\n\x0cmodel_warmup\x18\x10 \x03(\x0b2\x16.inference.ModelWarmup\x124\n\x10model"
    b"_operations\x18\x12 \x01(\x0b2\x1a.inference.ModelOperations\x12C\n\x18model_transaction_policy\x18\x13 "
    b"\x01(\x0b2!.inference.ModelTransactionPolicy\x12A\n\x17model_repository_agents\x18\x17 \x01(\x0b2 .infere"
    b"nce.ModelRepositoryAgents\x125\n\x0eresponse_cache\x18\x18 \x01(\x0b2\x1d.inference.ModelResponseCache"
    b"\x12.\n\rmodel_metrics\x18\x1a \x01(\x0b2\x17.inference.ModelMetrics\x1a7\n\x15CcModelFilenamesEntry\x12"
    b"\x0b\n\x03key\x18\x01 \x01(\t\x12\r\n\x05value\x18\x02 \x01(\t:\x028\x01\x1a1\n\x0fMetricTagsEntry\x12"
    b"\x0b\n\x03key\x18\x01 \x01(\t\x12\r\n\x05value\x18\x02 \x01(\t:\x028\x01\x1aL\n\x0fParametersEntry\x12"
    b"\x0b\n\x03key\x18\x01 \x01(\t\x12(\n\x05value\x18\x02 \x01(\x0b2\x19.inference.ModelParameter:\x028\x01B"
    b"\x13\n\x11scheduling_choice*\xfa\x01\n\x08DataType\x12\x10\n\x0cTYPE_INVALID\x10\x00\x12\r\n\tTYPE_BOOL"
    b"\x10\x01\x12\x0e\n\nTYPE_UINT8\x10\x02\x12\x0f\n\x0bTYPE_UINT16\x10\x03\x12\x0f\n\x0bTYPE_UINT32\x10\x04"
    b"\x12\x0f\n\x0bTYPE_UINT64\x10\x05\x12\r\n\tTYPE_INT8\x10\x06\x12\x0e\n\nTYPE_INT16\x10\x07\x12\x0e\n\nTYP"
    b"E_INT32\x10\x08\x12\x0e\n\nTYPE_INT64\x10\t\x12\r\n\tTYPE_FP16\x10\n\x12\r\n\tTYPE_FP32\x10\x0b\x12\r\n\t"
    b"TYPE_FP64\x10\x0c\x12\x0f\n\x0bTYPE_STRING\x10\r\x12\r\n\tTYPE_BF16\x10\x0eb\x06proto3"
)


@functools.cache
def _pool() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool

    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(MODEL_CONFIG_PROTO))
    return pool


@functools.cache
def message_class(name: str = "ModelConfig") -> Any:
    """The protobuf message class `inference.<name>` (e.g. ModelConfig, ModelInput)."""
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(f"inference.{name}"))


def enum_value(enum: str, name: str) -> int:
    """The number of an enum value, e.g. enum_value("DataType", "TYPE_FP32") or ("ModelInput.Format", "FORMAT_NCHW")."""
    return _pool().FindEnumTypeByName(f"inference.{enum}").values_by_name[name].number
